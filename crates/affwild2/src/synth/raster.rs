//! A tiny anti-aliased rasteriser for the synthetic faces: shapes are given in face
//! coordinates and drawn through a similarity transform (pose), with coverage from the signed
//! distance to the shape's edge.

/// Face coordinates -> image pixels: `img = centre + scale * R(angle) * (p - origin) + shift`.
#[derive(Debug, Clone, Copy)]
pub struct Pose {
    /// Point of the face the transform turns about (face coordinates).
    pub origin: [f32; 2],
    /// Where `origin` lands in the image, before `shift`.
    pub centre: [f32; 2],
    /// Scale (image pixels per face unit).
    pub scale: f32,
    /// Rotation in radians.
    pub angle: f32,
    /// Translation in pixels.
    pub shift: [f32; 2],
}

impl Pose {
    fn forward(&self, p: [f32; 2]) -> [f32; 2] {
        let (s, c) = self.angle.sin_cos();
        let d = [p[0] - self.origin[0], p[1] - self.origin[1]];
        [
            self.centre[0] + self.shift[0] + self.scale * (c * d[0] - s * d[1]),
            self.centre[1] + self.shift[1] + self.scale * (s * d[0] + c * d[1]),
        ]
    }

    fn inverse(&self, q: [f32; 2]) -> [f32; 2] {
        let (s, c) = self.angle.sin_cos();
        let d = [
            (q[0] - self.centre[0] - self.shift[0]) / self.scale,
            (q[1] - self.centre[1] - self.shift[1]) / self.scale,
        ];
        [
            self.origin[0] + c * d[0] + s * d[1],
            self.origin[1] - s * d[0] + c * d[1],
        ]
    }
}

/// A drawable shape in face coordinates.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Filled ellipse: centre, radii.
    Ellipse {
        /// Centre.
        c: [f32; 2],
        /// Radii.
        r: [f32; 2],
    },
    /// A stroked polyline of the given total width.
    Stroke {
        /// Points.
        pts: Vec<[f32; 2]>,
        /// Line width.
        width: f32,
    },
}

impl Shape {
    /// Signed distance (approximate for ellipses) in face units; negative inside.
    fn distance(&self, p: [f32; 2]) -> f32 {
        match self {
            Shape::Ellipse { c, r } => {
                let dx = (p[0] - c[0]) / r[0];
                let dy = (p[1] - c[1]) / r[1];
                ((dx * dx + dy * dy).sqrt() - 1.0) * r[0].min(r[1])
            }
            Shape::Stroke { pts, width } => {
                let mut best = f32::INFINITY;
                for w in pts.windows(2) {
                    best = best.min(segment_distance(p, w[0], w[1]));
                }
                if pts.len() == 1 {
                    best = ((p[0] - pts[0][0]).powi(2) + (p[1] - pts[0][1]).powi(2)).sqrt();
                }
                best - width / 2.0
            }
        }
    }

    /// Bounding box `[x0, y0, x1, y1]` in face units.
    fn bounds(&self) -> [f32; 4] {
        match self {
            Shape::Ellipse { c, r } => [c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]],
            Shape::Stroke { pts, width } => {
                let h = width / 2.0;
                let mut b = [
                    f32::INFINITY,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::NEG_INFINITY,
                ];
                for p in pts {
                    b = [
                        b[0].min(p[0] - h),
                        b[1].min(p[1] - h),
                        b[2].max(p[0] + h),
                        b[3].max(p[1] + h),
                    ];
                }
                b
            }
        }
    }
}

fn segment_distance(p: [f32; 2], a: [f32; 2], b: [f32; 2]) -> f32 {
    let ab = [b[0] - a[0], b[1] - a[1]];
    let ap = [p[0] - a[0], p[1] - a[1]];
    let len2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if len2 > 0.0 {
        ((ap[0] * ab[0] + ap[1] * ab[1]) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1]];
    (d[0] * d[0] + d[1] * d[1]).sqrt()
}

/// An RGB f32 canvas (0-255), row-major.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// Side in pixels.
    pub size: usize,
    /// `size * size * 3` values.
    pub px: Vec<f32>,
}

impl Canvas {
    /// A canvas filled by `f(x, y)`.
    pub fn from_fn(size: usize, f: impl Fn(f32, f32) -> [f32; 3]) -> Self {
        let mut px = Vec::with_capacity(size * size * 3);
        for y in 0..size {
            for x in 0..size {
                px.extend_from_slice(&f(x as f32, y as f32));
            }
        }
        Canvas { size, px }
    }

    /// Blends `shape` in `color` (alpha `opacity`) through `pose`.
    pub fn draw(&mut self, pose: &Pose, shape: &Shape, color: [f32; 3], opacity: f32) {
        let b = shape.bounds();
        let corners =
            [[b[0], b[1]], [b[2], b[1]], [b[0], b[3]], [b[2], b[3]]].map(|p| pose.forward(p));
        let lo = |i: usize| corners.iter().map(|c| c[i]).fold(f32::INFINITY, f32::min);
        let hi = |i: usize| {
            corners
                .iter()
                .map(|c| c[i])
                .fold(f32::NEG_INFINITY, f32::max)
        };
        let max = self.size as f32 - 1.0;
        let x0 = (lo(0) - 2.0).clamp(0.0, max) as usize;
        let x1 = (hi(0) + 2.0).clamp(0.0, max) as usize;
        let y0 = (lo(1) - 2.0).clamp(0.0, max) as usize;
        let y1 = (hi(1) + 2.0).clamp(0.0, max) as usize;
        for y in y0..=y1 {
            for x in x0..=x1 {
                let p = pose.inverse([x as f32 + 0.5, y as f32 + 0.5]);
                let d = shape.distance(p) * pose.scale;
                let cover = (0.5 - d).clamp(0.0, 1.0) * opacity;
                if cover > 0.0 {
                    let i = (y * self.size + x) * 3;
                    for (dst, &col) in self.px[i..i + 3].iter_mut().zip(&color) {
                        *dst += (col - *dst) * cover;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pose_inverse_round_trips() {
        let pose = Pose {
            origin: [56.0, 58.0],
            centre: [56.0, 58.0],
            scale: 0.95,
            angle: 0.07,
            shift: [2.0, -1.5],
        };
        let p = [30.0, 80.0];
        let q = pose.inverse(pose.forward(p));
        assert!((q[0] - p[0]).abs() < 1e-3 && (q[1] - p[1]).abs() < 1e-3);
    }

    #[test]
    fn draws_inside_not_outside() {
        let mut c = Canvas::from_fn(20, |_, _| [0.0; 3]);
        let pose = Pose {
            origin: [0.0; 2],
            centre: [0.0; 2],
            scale: 1.0,
            angle: 0.0,
            shift: [0.0; 2],
        };
        c.draw(
            &pose,
            &Shape::Ellipse {
                c: [10.0, 10.0],
                r: [4.0, 4.0],
            },
            [255.0; 3],
            1.0,
        );
        assert_eq!(c.px[(10 * 20 + 10) * 3], 255.0);
        assert_eq!(c.px[(2 * 20 + 2) * 3], 0.0);
        c.draw(
            &pose,
            &Shape::Stroke {
                pts: vec![[0.0, 18.0], [20.0, 18.0]],
                width: 2.0,
            },
            [9.0; 3],
            1.0,
        );
        assert_eq!(c.px[(18 * 20 + 5) * 3], 9.0);
    }
}

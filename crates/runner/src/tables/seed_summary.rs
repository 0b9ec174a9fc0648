//! Mean, sample standard deviation and a 95% Student-t interval over seeds.

/// Summary of one metric over runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Number of values averaged (the finite ones).
    pub n: usize,
    /// Number of values left out because they are NaN or infinite; a caller that reports `n`
    /// runs checks this is 0.
    pub non_finite: usize,
    /// Mean (`None` without values).
    pub mean: Option<f64>,
    /// Sample standard deviation (n - 1); `None` below 2 values.
    pub std: Option<f64>,
    /// Half-width of the 95% t interval of the mean; `None` below 2 values.
    pub ci95: Option<f64>,
}

/// Two-sided 97.5% quantiles of Student's t for 1..=30 degrees of freedom
/// (`scipy.stats.t.ppf(0.975, df)`, see scripts/reference/t_quantiles.py); beyond, the
/// Cornish-Fisher expansion in `1 / df` (within 1e-5 of scipy from 31 on).
const T975: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
    2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687,
    2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// The t quantile for `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df - 1],
        _ => t975_expansion(df as f64),
    }
}

/// The 97.5% t quantile for `nu` degrees of freedom from the normal one by the Cornish-Fisher
/// expansion to `nu^-4` (Abramowitz & Stegun 26.7.5).
fn t975_expansion(nu: f64) -> f64 {
    let z: f64 = 1.959_963_984_540_054;
    let (z3, z5, z7, z9) = (z.powi(3), z.powi(5), z.powi(7), z.powi(9));
    z + (z3 + z) / (4.0 * nu)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * nu.powi(2))
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * nu.powi(3))
        + (79.0 * z9 + 776.0 * z7 + 1482.0 * z5 - 1920.0 * z3 - 945.0 * z) / (92160.0 * nu.powi(4))
}

/// Summarises the finite values of `xs`; [`Summary::non_finite`] counts the others.
pub fn mean_std_ci(xs: &[f64]) -> Summary {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    let non_finite = xs.len() - n;
    if n == 0 {
        return Summary {
            non_finite,
            ..Summary::default()
        };
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Summary {
            n,
            non_finite,
            mean: Some(mean),
            std: None,
            ci95: None,
        };
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    Summary {
        n,
        non_finite,
        mean: Some(mean),
        std: Some(std),
        ci95: Some(t975(n - 1) * std / (n as f64).sqrt()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Beyond the table, `scipy.stats.t.ppf(0.975, df)` (scripts/reference/t_quantiles.py)
    /// within 1e-5; the table's own entries within its 4 decimals of the expansion at 30.
    #[test]
    fn t_quantiles_beyond_thirty_degrees_of_freedom() {
        for (df, scipy) in [
            (31, 2.039513),
            (40, 2.021075),
            (60, 2.000298),
            (120, 1.979930),
            (1000, 1.962339),
        ] {
            assert!((t975(df) - scipy).abs() < 1e-5, "{df}: {}", t975(df));
        }
        assert!((t975_expansion(30.0) - t975(30)).abs() < 1e-4);
    }

    #[test]
    fn summary() {
        let s = mean_std_ci(&[1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!(s.n, 3);
        assert_eq!(s.non_finite, 1);
        assert_eq!(s.mean, Some(2.0));
        assert_eq!(s.std, Some(1.0));
        assert!((s.ci95.unwrap() - t975(2) / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(mean_std_ci(&[5.0]).std, None);
        assert_eq!(mean_std_ci(&[5.0]).non_finite, 0);
        assert_eq!(mean_std_ci(&[]).mean, None);
        let s = mean_std_ci(&[f64::INFINITY, f64::NAN]);
        assert_eq!((s.n, s.non_finite, s.mean), (0, 2, None));
        let s = mean_std_ci(&[4.0, f64::NEG_INFINITY, 6.0]);
        assert_eq!((s.n, s.non_finite, s.mean), (2, 1, Some(5.0)));
        assert!(T975.windows(2).all(|w| w[0] > w[1] && w[1] > 1.96));
    }
}

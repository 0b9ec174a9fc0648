//! Which submission format `mtanet predict` writes and `mtanet submit validate` checks.

use mtanet_affwild2::Layout;

/// A submission format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubmissionFormat {
    /// ABAW 2020/2021: one `<video>.txt` per video and task, one line per frame
    /// ([`crate::submission::abaw2020`]).
    Abaw2020,
    /// ABAW 2023+: one file per single-task track, one `image_location` row per frame
    /// ([`crate::submission::abaw2023`]).
    Abaw2023,
    /// The multi-task track: one file, header `image,valence,arousal,expression,aus`, one
    /// 0/1 field per AU in each row ([`crate::submission::mtl`]).
    Mtl,
}

impl SubmissionFormat {
    /// Every format, in the order of their names.
    pub const ALL: [SubmissionFormat; 3] = [
        SubmissionFormat::Abaw2020,
        SubmissionFormat::Abaw2023,
        SubmissionFormat::Mtl,
    ];

    /// The format's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            SubmissionFormat::Abaw2020 => "abaw2020",
            SubmissionFormat::Abaw2023 => "abaw2023",
            SubmissionFormat::Mtl => "mtl",
        }
    }

    /// The format a root of `layout` defaults to: ABAW 2020 for the 2020/2021 layouts (and a
    /// root without annotations), ABAW 2023 for the 2022+ layout.
    pub fn default_for(layout: Option<Layout>) -> SubmissionFormat {
        match layout {
            Some(Layout::Abaw2022) => SubmissionFormat::Abaw2023,
            _ => SubmissionFormat::Abaw2020,
        }
    }
}

impl std::fmt::Display for SubmissionFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SubmissionFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubmissionFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown submission format {s:?}: use abaw2020, abaw2023 or mtl")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_layouts_pick_defaults() {
        for f in SubmissionFormat::ALL {
            assert_eq!(f.name().parse::<SubmissionFormat>(), Ok(f));
        }
        assert!("abaw2021".parse::<SubmissionFormat>().is_err());
        assert_eq!(
            SubmissionFormat::default_for(Some(Layout::Abaw2021)),
            SubmissionFormat::Abaw2020
        );
        assert_eq!(
            SubmissionFormat::default_for(Some(Layout::Abaw2022)),
            SubmissionFormat::Abaw2023
        );
        assert_eq!(
            SubmissionFormat::default_for(None),
            SubmissionFormat::Abaw2020
        );
    }
}

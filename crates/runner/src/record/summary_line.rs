//! One-line summaries of a validation report, for the terminal and `log.txt`.

use mtanet_metrics::Report;

/// One line: CCC-V, CCC-A, AU F1, EXPR F1.
pub fn short_report(r: &Report) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    format!(
        "CCC-V {} CCC-A {} AU-F1 {} EXPR-F1 {}",
        f(r.va.as_ref().map(|v| v.ccc_valence)),
        f(r.va.as_ref().map(|v| v.ccc_arousal)),
        f(r.au.as_ref().map(|v| v.f1)),
        f(r.expr.as_ref().map(|v| v.f1)),
    )
}

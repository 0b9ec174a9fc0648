//! `MTANET_KERNEL_PROFILE=1`: one training conv + BatchNorm forward and backward add one call to
//! each of its five labels, and taking the table empties it.

use candle_core::{Result, Var};
use mtanet_kernels::{conv_bn_train, profile, ConvParams};

mod support;
use support::pseudo_random;

#[test]
fn a_fused_conv_bn_step_is_timed_by_pass_and_shape() -> Result<()> {
    // This test binary runs only this test, so no other thread reads the variable first.
    std::env::set_var("MTANET_KERNEL_PROFILE", "1");
    assert!(profile::enabled());
    let x = Var::from_tensor(&pseudo_random(&[2, 4, 8, 8], 1, 1.0, 0.0)?)?;
    let w = Var::from_tensor(&pseudo_random(&[6, 2, 3, 3], 2, 0.3, 0.0)?)?;
    let gamma = Var::from_tensor(&pseudo_random(&[6], 3, 0.2, 1.0)?)?;
    let beta = Var::from_tensor(&pseudo_random(&[6], 4, 0.2, 0.0)?)?;
    let params = ConvParams {
        stride: 2,
        padding: 1,
        groups: 2,
    };
    let (y, _) = conv_bn_train(
        x.as_tensor(),
        w.as_tensor(),
        gamma.as_tensor(),
        beta.as_tensor(),
        params,
        1e-5,
        true,
    )?;
    y.sum_all()?.backward()?;
    let table = profile::take();
    let mut labels: Vec<(&str, u64)> = table.iter().map(|k| (k.label.as_str(), k.calls)).collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            ("bn @4 bwd", 1),
            ("bn @4 fwd", 1),
            ("conv 3x3 s2 g2 @4 dw", 1),
            ("conv 3x3 s2 g2 @4 dx", 1),
            ("conv 3x3 s2 g2 @4 fwd", 1),
        ]
    );
    assert!(table.iter().all(|k| k.seconds >= 0.0));
    assert!(profile::take().is_empty());
    Ok(())
}

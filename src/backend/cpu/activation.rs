//! The elementwise nonlinearities and their derivatives, one `#[inline(always)]`
//! function each: [`with_activation!`] hands a kind's pair to a loop as fn
//! items (not pointers), so the call inlines and the loop vectorises.

use super::fast_math;

/// GELU tanh approximation constant sqrt(2/π).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
pub fn relu(x: f32) -> f32 {
    x.max(0.0)
}

#[inline(always)]
pub fn relu_grad(x: f32) -> f32 {
    if x > 0.0 { 1.0 } else { 0.0 }
}

#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    fast_math::tanh(x)
}

#[inline(always)]
pub fn tanh_grad(x: f32) -> f32 {
    1.0 - fast_math::tanh(x).powi(2)
}

#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + fast_math::tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
}

#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    let t = fast_math::tanh(u);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

/// σ(x) = (1 + tanh(x/2))/2: the vectorised tanh, no exp overflow.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    0.5 * (1.0 + fast_math::tanh(0.5 * x))
}

/// SiLU (swish), x·σ(x) (Elfwing et al. 2018; the gate of SwiGLU).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// Runs `$body` with `$f` and `$df` bound to `$kind`'s function and derivative.
macro_rules! with_activation {
    ($kind:expr, |$f:ident, $df:ident| $body:expr) => {{
        use $crate::backend::Activation;
        use $crate::backend::cpu::activation::*;
        match $kind {
            Activation::Relu => {
                let ($f, $df) = (relu, relu_grad);
                $body
            }
            Activation::Tanh => {
                let ($f, $df) = (tanh, tanh_grad);
                $body
            }
            Activation::Gelu => {
                let ($f, $df) = (gelu, gelu_grad);
                $body
            }
            Activation::Silu => {
                let ($f, $df) = (silu, silu_grad);
                $body
            }
        }
    }};
}
pub(crate) use with_activation;

//! Learning-rate schedules: one factor on every group's learning rate, a
//! function of the step alone, so a resumed run continues its schedule exactly
//! and the `lr` column records the value each step used.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

/// How the learning rate falls after the warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// No decay.
    Constant,
    /// Half a cosine from 1 down to `final_fraction` (Loshchilov & Hutter 2017,
    /// SGDR without restarts; nanoGPT's and most ViT recipes' decay).
    Cosine,
    /// A straight line from 1 down to `final_fraction`.
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// Steps of linear warmup: step s ≤ warmup_steps uses s/warmup_steps of the
    /// learning rate (Goyal et al. 2017); 0: none.
    pub warmup_steps: u64,
    pub decay: Decay,
    /// The fraction of the learning rate the decay ends at, on the last step.
    pub final_fraction: f64,
}

impl Default for Schedule {
    /// A constant learning rate.
    fn default() -> Self {
        Self { warmup_steps: 0, decay: Decay::Constant, final_fraction: 0.0 }
    }
}

impl Schedule {
    /// The factor at 1-based `step` of a run of `total` steps.
    pub fn factor(&self, step: u64, total: u64) -> f64 {
        if step <= self.warmup_steps {
            return step as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let f = self.final_fraction;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine => f + (1.0 - f) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Decay::Linear => f + (1.0 - f) * (1.0 - t),
        }
    }

    /// A final fraction in [0, 1] and, once the run's length is known, a warmup
    /// shorter than the run.
    pub fn validate(&self, total_steps: Option<u64>) -> Result<()> {
        ensure!((0.0..=1.0).contains(&self.final_fraction), "schedule.final_fraction must be in [0, 1], got {}", self.final_fraction);
        if let Some(total) = total_steps {
            ensure!(self.warmup_steps < total, "schedule.warmup_steps ({}) must be fewer than the run's {total} steps", self.warmup_steps);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_in_closed_form() {
        let cosine = Schedule { warmup_steps: 10, decay: Decay::Cosine, final_fraction: 0.1 };
        assert_eq!(cosine.factor(1, 110), 0.1);
        assert_eq!(cosine.factor(5, 110), 0.5);
        assert_eq!(cosine.factor(10, 110), 1.0);
        // Halfway through the decay: the midpoint between 1 and the final fraction.
        assert!((cosine.factor(60, 110) - 0.55).abs() < 1e-12);
        assert!((cosine.factor(110, 110) - 0.1).abs() < 1e-12);
        let linear = Schedule { warmup_steps: 0, decay: Decay::Linear, final_fraction: 0.0 };
        assert!((linear.factor(25, 100) - 0.75).abs() < 1e-12);
        assert_eq!(linear.factor(100, 100), 0.0);
        assert_eq!(Schedule::default().factor(7, 100), 1.0);
        assert!(Schedule { warmup_steps: 100, ..cosine }.validate(Some(100)).is_err());
        Schedule { warmup_steps: 100, ..cosine }.validate(None).unwrap();
        assert!(Schedule { final_fraction: 1.5, ..cosine }.validate(None).is_err());
        cosine.validate(Some(1000)).unwrap();
    }
}

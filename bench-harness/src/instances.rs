//! The backend instances of a run: every named (or default) backend, at every thread count for
//! parallel ones, each timed end to end and, when it is a device backend, resident too.

use crate::backends::{self, BackendConfig, Built};
use crate::schema::Skipped;

/// A built backend with the thread count it runs on.
pub struct Instance {
    /// The registry name.
    pub name: String,
    /// Its thread count.
    pub threads: usize,
    /// The backend (and its device side, if any).
    pub built: Built,
}

/// How a configuration is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// Host slices in, host slices out, through the [`loss_core::LossBackend`] methods.
    EndToEnd,
    /// The problem uploaded once; only the loss read back ([`loss_core::ResidentProblem`]).
    Resident,
}

impl Variant {
    /// The `variant` field of a result: empty end to end, `resident` otherwise.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::EndToEnd => "",
            Variant::Resident => "resident",
        }
    }

    /// Parses the `variant` field.
    pub fn parse(s: &str) -> Option<Variant> {
        match s {
            "" => Some(Variant::EndToEnd),
            "resident" => Some(Variant::Resident),
            _ => None,
        }
    }
}

impl Instance {
    /// The ways this instance is timed: end to end, and resident for device backends.
    pub fn variants(&self) -> Vec<Variant> {
        if self.built.device.is_some() {
            vec![Variant::EndToEnd, Variant::Resident]
        } else {
            vec![Variant::EndToEnd]
        }
    }
}

/// Builds the instances of `names` (every backend timed by default when empty) at `threads`;
/// what cannot be built, or should not be timed, becomes a skip entry with the reason.
pub fn instances(names: &[String], threads: &[usize], skipped: &mut Vec<Skipped>) -> Vec<Instance> {
    let by_default = names.is_empty();
    let names: Vec<String> = if by_default {
        backends::registry()
            .iter()
            .filter(|s| s.timed_by_default)
            .map(|s| s.name.to_string())
            .collect()
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for name in names {
        let spec = match backends::spec(&name) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(Skipped::backend(&name, e.to_string()));
                continue;
            }
        };
        let counts = if spec.parallel {
            threads.to_vec()
        } else {
            vec![1]
        };
        for t in counts {
            match (spec.build)(spec.name, BackendConfig { threads: Some(t) }) {
                Ok(built) => {
                    let caveat = built.device.as_ref().and_then(|d| d.timing_caveat());
                    match caveat {
                        Some(why) if by_default => skipped.push(Skipped::backend(
                            &name,
                            format!(
                                "not timed by default: {why}; `--backend {name}` times it anyway"
                            ),
                        )),
                        _ => out.push(Instance {
                            name: name.clone(),
                            threads: t,
                            built,
                        }),
                    }
                }
                Err(e) => skipped.push(Skipped::backend(&name, e.to_string())),
            }
        }
    }
    out
}

//! The short names of the wire enums and of a verification policy, as users write and read them
//! everywhere (the CLI's flags, text and JSON, the services' messages and tables): the proto
//! name in lowercase without its prefix (`TASK_STATE_OUT_OF_FUEL` is not a state, but
//! `EXIT_KIND_OUT_OF_FUEL` is `out_of_fuel`, `VERDICT_VERIFIED` is `verified`).

use std::fmt;
use std::str::FromStr;

use crate::v1::{
    ExitKind, GuestAbi, HoldState, NodeStatus, PolicyKind, TaskState, Verdict, VerificationPolicy,
};

/// A name that is not one of a type's short names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What was being parsed, e.g. `task state`.
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names that would have been accepted.
    pub expected: String,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: use {}",
            self.what, self.name, self.expected
        )
    }
}

impl std::error::Error for UnknownName {}

macro_rules! short_names {
    ($ty:ident, $prefix:literal, $what:literal, [$($variant:ident),* $(,)?]) => {
        impl $ty {
            /// The short name: the proto name in lowercase, without its prefix.
            pub fn short_name(self) -> &'static str {
                let full = self.as_str_name();
                let short = full.strip_prefix($prefix).unwrap_or(full);
                // The proto names are ASCII upper case; the short names are their lowercase,
                // computed once per variant.
                match self {
                    $($ty::$variant => {
                        static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                        NAME.get_or_init(|| short.to_ascii_lowercase()).as_str()
                    })*
                }
            }

            /// The short name of a raw wire value; values this build does not know are
            /// `unspecified`.
            pub fn short_name_of(value: i32) -> &'static str {
                $ty::try_from(value).unwrap_or($ty::Unspecified).short_name()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.short_name())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            /// Parses a short name (`unspecified` is refused).
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                let known = [$($ty::$variant),*];
                known
                    .iter()
                    .copied()
                    .filter(|v| *v != $ty::Unspecified)
                    .find(|v| v.short_name() == s)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        name: s.to_string(),
                        expected: known
                            .iter()
                            .filter(|v| **v != $ty::Unspecified)
                            .map(|v| v.short_name())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}

short_names!(
    TaskState,
    "TASK_STATE_",
    "task state",
    [
        Unspecified,
        Queued,
        Assigned,
        Running,
        Reported,
        Verified,
        Settled,
        Rejected,
        Expired,
        Failed,
        Cancelled,
    ]
);
short_names!(
    ExitKind,
    "EXIT_KIND_",
    "exit kind",
    [
        Unspecified,
        Ok,
        Trap,
        OutOfFuel,
        OutOfMemory,
        StackExhausted,
        Timeout,
        OutputTooLarge,
        InvalidModule,
        ForbiddenImport,
        ExitCode,
    ]
);
short_names!(
    Verdict,
    "VERDICT_",
    "verdict",
    [Unspecified, Pending, Verified, Rejected]
);
short_names!(
    PolicyKind,
    "POLICY_KIND_",
    "policy kind",
    [Unspecified, Receipt, Replicate, Proof]
);
short_names!(
    NodeStatus,
    "NODE_STATUS_",
    "node status",
    [Unspecified, Pending, Active, Offline, Denied, Revoked,]
);
short_names!(
    GuestAbi,
    "GUEST_ABI_",
    "guest ABI",
    [Unspecified, Zkmesh, Wasi]
);
short_names!(
    HoldState,
    "HOLD_STATE_",
    "hold state",
    [Unspecified, Open, Captured, Released]
);

/// `receipt`, `proof` or `replicate:K`.
impl fmt::Display for VerificationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            PolicyKind::Replicate => write!(f, "replicate:{}", self.replicas),
            kind => f.write_str(kind.short_name()),
        }
    }
}

/// Parses `receipt`, `proof` or `replicate:K` with K at least 2 (the verifier also caps K).
impl FromStr for VerificationPolicy {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        let bad = || UnknownName {
            what: "policy",
            name: s.to_string(),
            expected: "receipt, replicate:K (K >= 2) or proof".into(),
        };
        let (kind, replicas) = match s {
            "receipt" => (PolicyKind::Receipt, 0),
            "proof" => (PolicyKind::Proof, 0),
            _ => {
                let k: u32 = s
                    .strip_prefix("replicate:")
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(bad)?;
                if k < 2 {
                    return Err(bad());
                }
                (PolicyKind::Replicate, k)
            }
        };
        Ok(VerificationPolicy {
            kind: kind as i32,
            replicas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        assert_eq!(TaskState::Settled.to_string(), "settled");
        assert_eq!(ExitKind::OutOfFuel.to_string(), "out_of_fuel");
        assert_eq!(Verdict::Verified.to_string(), "verified");
        assert_eq!(Verdict::short_name_of(99), "unspecified");
        for s in ["queued", "assigned", "settled", "cancelled"] {
            assert_eq!(s.parse::<TaskState>().unwrap().to_string(), s);
        }
        assert_eq!(
            "stack_exhausted".parse::<ExitKind>(),
            Ok(ExitKind::StackExhausted)
        );
        let err = "unspecified".parse::<Verdict>().unwrap_err();
        assert_eq!(err.expected, "pending, verified, rejected");
        assert!("Verified".parse::<Verdict>().is_err());
        for p in ["receipt", "proof", "replicate:2", "replicate:5"] {
            assert_eq!(p.parse::<VerificationPolicy>().unwrap().to_string(), p);
        }
        for p in ["replicate:1", "replicate:", "replicate:x", "Receipt", ""] {
            assert!(p.parse::<VerificationPolicy>().is_err(), "{p}");
        }
        assert_eq!(VerificationPolicy::default().to_string(), "unspecified");
    }
}

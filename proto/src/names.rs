//! The short names of the wire enums and of a verification policy, as users write and read them
//! everywhere (the CLI's flags, text and JSON, the services' messages and tables): the proto
//! name in lowercase without its prefix (`TASK_STATE_OUT_OF_FUEL` is not a state, but
//! `EXIT_KIND_OUT_OF_FUEL` is `out_of_fuel`, `VERDICT_VERIFIED` is `verified`).

use std::fmt;
use std::str::FromStr;

use crate::v1::{
    CircuitSetupState, ExitKind, GuestAbi, HoldState, JournalEntryKind, NodeStatus, PolicyKind,
    TaskState, Verdict, VerificationPolicy, ZkHalt,
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

short_names!(
    JournalEntryKind,
    "JOURNAL_ENTRY_KIND_",
    "journal entry kind",
    [Unspecified, Mint, Hold, Pay, Refund, Release]
);
short_names!(
    CircuitSetupState,
    "CIRCUIT_SETUP_STATE_",
    "circuit setup state",
    [Unspecified, NotSetUp, SettingUp, Ready, Failed]
);
short_names!(
    ZkHalt,
    "ZK_HALT_",
    "zkVM halt",
    [
        Unspecified,
        Returned,
        Unreachable,
        IndirectCall,
        OutOfBounds,
        DivideByZero,
        IntegerOverflow,
        OutOfMemory,
    ]
);

impl ZkHalt {
    /// The zkVM's halt code for this halt, as the proof statement holds it: the enum's value
    /// minus one. `None` for `Unspecified`.
    pub fn code(self) -> Option<u64> {
        (self as i32 as u64).checked_sub(1)
    }

    /// The halt of a zkVM halt code; `None` for a code no halt has.
    pub fn from_code(code: u64) -> Option<Self> {
        let value = i32::try_from(code.checked_add(1)?).ok()?;
        ZkHalt::try_from(value)
            .ok()
            .filter(|h| *h != ZkHalt::Unspecified)
    }

    /// The halt code of a raw wire value; `None` when the value is unspecified or unknown to
    /// this build (such a proof cannot be checked).
    pub fn code_of(value: i32) -> Option<u64> {
        ZkHalt::try_from(value).ok().and_then(ZkHalt::code)
    }
}

impl crate::v1::ZkProof {
    /// The halt code the proof claims: its `halt`'s, or the legacy `status` of a proof from a
    /// version before `halt` (when `halt` is unspecified). `None` when neither is known.
    pub fn halt_code(&self) -> Option<u64> {
        if self.halt == ZkHalt::Unspecified as i32 {
            ZkHalt::from_code(self.status).and_then(ZkHalt::code)
        } else {
            ZkHalt::code_of(self.halt)
        }
    }
}

impl crate::v1::CircuitInfo {
    /// The state as one line for people: "ready", "setting up (PHASE, N s)", "failed: WHY" or
    /// "not set up".
    pub fn state_line(&self) -> String {
        match self.state() {
            CircuitSetupState::Ready => "ready".into(),
            CircuitSetupState::SettingUp => format!("setting up ({})", self.state_detail),
            CircuitSetupState::Failed => format!("failed: {}", self.state_detail),
            CircuitSetupState::NotSetUp => "not set up".into(),
            CircuitSetupState::Unspecified => "unknown".into(),
        }
    }
}

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
        assert_eq!(JournalEntryKind::Refund.to_string(), "refund");
        assert_eq!(CircuitSetupState::NotSetUp.to_string(), "not_set_up");
    }

    #[test]
    fn zk_halts_map_one_to_one_onto_halt_codes() {
        assert_eq!(ZkHalt::Returned.code(), Some(0));
        assert_eq!(ZkHalt::OutOfMemory.code(), Some(6));
        assert_eq!(ZkHalt::Unspecified.code(), None);
        assert_eq!(ZkHalt::code_of(0), None);
        assert_eq!(ZkHalt::code_of(99), None);
        assert_eq!(ZkHalt::code_of(-1), None);
        for code in 0..7 {
            assert_eq!(ZkHalt::from_code(code).and_then(ZkHalt::code), Some(code));
        }
        assert_eq!(ZkHalt::from_code(7), None);
        assert_eq!(ZkHalt::from_code(u64::MAX), None);
        // A proof from before `halt` (status 0 is also what such a proof of a return sends).
        let proof = |halt: ZkHalt, status| crate::v1::ZkProof {
            halt: halt as i32,
            status,
            ..Default::default()
        };
        assert_eq!(proof(ZkHalt::Unspecified, 0).halt_code(), Some(0));
        assert_eq!(proof(ZkHalt::Unspecified, 6).halt_code(), Some(6));
        assert_eq!(proof(ZkHalt::Unspecified, 7).halt_code(), None);
        // `halt` wins when it is set.
        assert_eq!(proof(ZkHalt::Unreachable, 0).halt_code(), Some(1));
    }
}

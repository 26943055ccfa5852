//! Evaluation and build status as state machines. Every change of status goes through `transition`, so an
//! illegal move (a completed build going back to building, an aborted evaluation completing) is an error
//! instead of a silent overwrite.

use serde::{Deserialize, Serialize};

/// A status change that the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {kind} transition from {from} to {to}")]
pub struct IllegalTransition {
    pub kind: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// Where an evaluation is in its life: Queued → Fetching → Evaluating → Building → Completed, with Failed
/// reachable from every working state and Aborted from every state that has not ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EvaluationStatus {
    Queued,
    Fetching,
    Evaluating,
    Building,
    Completed,
    Failed,
    Aborted,
}

impl EvaluationStatus {
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Fetching,
        Self::Evaluating,
        Self::Building,
        Self::Completed,
        Self::Failed,
        Self::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "Queued",
            Self::Fetching => "Fetching",
            Self::Evaluating => "Evaluating",
            Self::Building => "Building",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Aborted)
    }

    pub fn can_become(self, to: Self) -> bool {
        use EvaluationStatus::*;
        match (self, to) {
            (Queued, Fetching) | (Fetching, Evaluating) | (Evaluating, Building) | (Building, Completed) => true,
            // An evaluation that selects nothing to build completes straight after evaluating.
            (Evaluating, Completed) => true,
            (Fetching | Evaluating | Building, Failed) => true,
            // A lost worker hands the fetch/evaluation back to the queue.
            (Fetching | Evaluating, Queued) => true,
            (from, Aborted) => !from.is_terminal(),
            // Restarting the failed or aborted builds of an evaluation that got as far as building.
            (Failed | Aborted, Building) => true,
            _ => false,
        }
    }

    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition {
                kind: "evaluation",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

/// Where one derivation's build is: Queued until its inputs are ready and a worker takes it, then Building,
/// ending Completed, Failed, Aborted, Substituted (already in a cache, nothing to do) or DependencyFailed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BuildStatus {
    Queued,
    Building,
    Completed,
    Failed,
    Aborted,
    Substituted,
    DependencyFailed,
}

impl BuildStatus {
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Building,
        Self::Completed,
        Self::Failed,
        Self::Aborted,
        Self::Substituted,
        Self::DependencyFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "Queued",
            Self::Building => "Building",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
            Self::Substituted => "Substituted",
            Self::DependencyFailed => "DependencyFailed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Building)
    }

    /// Whether the outputs of a build in this status can be used by the builds that depend on it.
    pub fn provides_outputs(self) -> bool {
        matches!(self, Self::Completed | Self::Substituted)
    }

    pub fn can_become(self, to: Self) -> bool {
        use BuildStatus::*;
        match (self, to) {
            (Queued, Building | Substituted | DependencyFailed | Aborted) => true,
            (Building, Completed | Failed | Aborted) => true,
            // Built in one Nix run with its inputs (a chain handed to one worker), one of which failed.
            (Building, DependencyFailed) => true,
            // The worker was lost mid-build: back to the queue for another worker.
            (Building, Queued) => true,
            // Restarting a build that did not succeed.
            (Failed | Aborted | DependencyFailed, Queued) => true,
            _ => false,
        }
    }

    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition {
                kind: "build",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_happy_path_and_illegal_moves() {
        use EvaluationStatus::*;
        let mut s = Queued;
        for next in [Fetching, Evaluating, Building, Completed] {
            s = s.transition(next).unwrap();
        }
        assert_eq!(s, Completed);
        for to in EvaluationStatus::ALL {
            assert!(Completed.transition(to).is_err(), "Completed -> {to:?}");
            // An ended evaluation only goes back to building, when its builds are restarted.
            assert_eq!(Aborted.transition(to).is_ok(), to == Building, "Aborted -> {to:?}");
            assert_eq!(Failed.transition(to).is_ok(), to == Building, "Failed -> {to:?}");
        }
        assert!(Queued.transition(Building).is_err());
        assert!(Queued.transition(Completed).is_err());
        assert!(Queued.transition(Failed).is_err());
        assert_eq!(
            Building.transition(Queued).unwrap_err().to_string(),
            "illegal evaluation transition from Building to Queued"
        );
    }

    #[test]
    fn every_live_evaluation_can_be_aborted() {
        for s in EvaluationStatus::ALL {
            assert_eq!(s.can_become(EvaluationStatus::Aborted), !s.is_terminal(), "{s:?}");
        }
    }

    #[test]
    fn build_transitions() {
        use BuildStatus::*;
        let table = [
            (Queued, Building, true),
            (Queued, Substituted, true),
            (Queued, DependencyFailed, true),
            (Queued, Completed, false),
            (Building, Completed, true),
            (Building, Failed, true),
            (Building, DependencyFailed, true),
            (Building, Queued, true),
            (Failed, Queued, true),
            (DependencyFailed, Queued, true),
            (Completed, Queued, false),
            (Completed, Building, false),
            (Substituted, Queued, false),
            (Failed, Completed, false),
        ];
        for (from, to, ok) in table {
            assert_eq!(from.transition(to).is_ok(), ok, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn status_names_round_trip() {
        for s in EvaluationStatus::ALL {
            assert_eq!(EvaluationStatus::parse(s.as_str()), Some(s));
        }
        for s in BuildStatus::ALL {
            assert_eq!(BuildStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(BuildStatus::parse("nope"), None);
    }
}

use super::Timestamp;
use crate::status::EvaluationStatus;
use crate::{EvaluationId, ProjectId};

/// One evaluation of a project's flake at one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub id: EvaluationId,
    pub project_id: ProjectId,
    /// Full commit hash.
    pub commit: String,
    pub branch: Option<String>,
    pub trigger: EvaluationTrigger,
    /// The pull request (GitLab: merge request) this evaluation is of; `None` for a branch's commit.
    pub pull_request: Option<PullRequestSource>,
    pub status: EvaluationStatus,
    /// Attribute-level errors (the attribute's path and Nix's message); others still build.
    pub errors: Vec<AttributeError>,
    /// Every status it took and when, oldest first (starting with Queued at `created_at`).
    pub transitions: Vec<super::Transition<EvaluationStatus>>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Evaluation {
    /// The ref the worker fetches the commit by: the pull request's ref in the base repository, or the branch.
    pub fn fetch_ref(&self) -> Option<String> {
        match &self.pull_request {
            Some(pr) => Some(pr.fetch_ref.clone()),
            None => self.branch.clone(),
        }
    }

    /// The commit statuses are set on: a pull request's head, else the evaluated commit.
    pub fn status_commit(&self) -> &str {
        self.pull_request.as_ref().map_or(&self.commit, |pr| &pr.head_commit)
    }

    /// Moves the evaluation to `to` at `at` when its state machine allows it; answers whether it moved.
    pub fn move_to(&mut self, to: EvaluationStatus, at: Timestamp) -> bool {
        if self.status == to || !self.status.can_become(to) {
            return false;
        }
        self.status = to;
        self.updated_at = at;
        self.transitions.push(super::Transition { status: to, at });
        true
    }

    /// Moves the running evaluation to `to` at `at`, through the states on the way a skipped report would have
    /// set (a worker that evaluates nothing still went through `Fetching` and `Evaluating`); answers whether it
    /// moved. An ended evaluation does not move (a restart, the one way back, is an explicit
    /// [`Self::move_to`]), nor does a move the state machine does not allow.
    pub fn advance_to(&mut self, to: EvaluationStatus, at: Timestamp) -> bool {
        use EvaluationStatus::*;
        if self.status.is_terminal() {
            return false;
        }
        let on_the_way: &[EvaluationStatus] = match to {
            Evaluating | Failed => &[Fetching],
            Building => &[Fetching, Evaluating],
            Completed => &[Fetching, Evaluating, Building],
            _ => &[],
        };
        let mut moved = false;
        for step in on_the_way {
            if self.status == to || self.status.can_become(to) {
                break;
            }
            moved |= self.move_to(*step, at);
        }
        moved | self.move_to(to, at)
    }
}

/// Where a pull request's evaluation comes from (see [`crate::forge::PullRequestEvent`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullRequestSource {
    /// The pull request's number (GitLab: the merge request's iid).
    pub number: u64,
    /// Whether it comes from another repository than the project's (a fork).
    pub fork: bool,
    /// The head repository's URL, when the forge named it.
    pub head_repository: Option<String>,
    /// The head repository's branch.
    pub head_branch: String,
    /// The pull request's head commit: commit statuses go there.
    pub head_commit: String,
    /// The ref of the project's repository the worker fetches the evaluated commit by (`refs/pull/N/head`,
    /// `refs/pull/N/merge`, `refs/merge-requests/N/head`).
    pub fetch_ref: String,
}

/// What started an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvaluationTrigger {
    Manual,
    Poll,
    Webhook,
    /// The project's schedule (evaluated whether or not the commit is new).
    Schedule,
}

impl EvaluationTrigger {
    pub const ALL: [Self; 4] = [Self::Manual, Self::Poll, Self::Webhook, Self::Schedule];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "Manual",
            Self::Poll => "Poll",
            Self::Webhook => "Webhook",
            Self::Schedule => "Schedule",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// An attribute that failed to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeError {
    pub attribute: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use EvaluationStatus::*;

    fn at(status: EvaluationStatus) -> Evaluation {
        let now = chrono::DateTime::UNIX_EPOCH;
        Evaluation {
            id: EvaluationId::new(),
            project_id: ProjectId::new(),
            commit: "a".repeat(40),
            branch: None,
            trigger: super::EvaluationTrigger::Manual,
            pull_request: None,
            status,
            errors: Vec::new(),
            transitions: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    fn path(e: &Evaluation) -> Vec<EvaluationStatus> {
        e.transitions.iter().map(|t| t.status).collect()
    }

    #[test]
    fn advancing_walks_the_states_a_skipped_report_would_have_set() {
        let now = chrono::DateTime::UNIX_EPOCH;
        // (from, to, moved, the transitions recorded)
        let table = [
            (Queued, Building, true, vec![Fetching, Evaluating, Building]),
            (Queued, Evaluating, true, vec![Fetching, Evaluating]),
            (Queued, Failed, true, vec![Fetching, Failed]),
            (Fetching, Queued, true, vec![Queued]),
            (Evaluating, Completed, true, vec![Completed]),
            (Building, Completed, true, vec![Completed]),
            (Building, Queued, false, vec![]),
            (Building, Building, false, vec![]),
            // An ended evaluation stays ended, though a restart could take it back to Building.
            (Aborted, Completed, false, vec![]),
            (Failed, Building, false, vec![]),
            (Completed, Evaluating, false, vec![]),
        ];
        for (i, (from, to, moved, want)) in table.into_iter().enumerate() {
            let mut e = at(from);
            assert_eq!(e.advance_to(to, now), moved, "case {i}");
            assert_eq!(path(&e), want, "case {i}");
        }
    }
}

//! What changed between two evaluations of a project, attribute by attribute, and an evaluation's failures
//! grouped by their root cause. Pure: the use case (`Gradient::evaluation_diff`) gathers the builds.

use crate::status::BuildStatus;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// An attribute's build in one evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeBuild {
    pub attribute: String,
    pub drv_path: String,
    pub status: BuildStatus,
}

/// How an attribute changed since the previous evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Failed now, did not fail before.
    NewlyFailing,
    /// Succeeded now, failed before.
    NewlyFixed,
    /// Failed before and now.
    StillFailing,
    /// Not in the previous evaluation.
    New,
    /// In the previous evaluation only.
    Removed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewlyFailing => "newly_failing",
            Self::NewlyFixed => "newly_fixed",
            Self::StillFailing => "still_failing",
            Self::New => "new",
            Self::Removed => "removed",
        }
    }
}

/// One changed attribute: its build now (before, for a removed one) and its status before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeChange {
    pub change: Change,
    pub attribute: String,
    pub drv_path: String,
    pub status: BuildStatus,
    pub previous_status: Option<BuildStatus>,
}

/// A build that did not succeed by its own fault or by a dependency's.
pub fn is_failure(s: BuildStatus) -> bool {
    matches!(
        s,
        BuildStatus::Failed | BuildStatus::DependencyFailed | BuildStatus::Aborted
    )
}

fn is_success(s: BuildStatus) -> bool {
    matches!(s, BuildStatus::Completed | BuildStatus::Substituted)
}

/// The changed attributes, by change then attribute. An attribute still queued or building now is not
/// "fixed" yet, and an unchanged outcome is no change.
pub fn compare(previous: &[AttributeBuild], current: &[AttributeBuild]) -> Vec<AttributeChange> {
    let before: BTreeMap<&str, &AttributeBuild> = previous.iter().map(|b| (b.attribute.as_str(), b)).collect();
    let now: BTreeMap<&str, &AttributeBuild> = current.iter().map(|b| (b.attribute.as_str(), b)).collect();
    let mut out = Vec::new();
    for (attr, b) in &now {
        let change = match before.get(attr) {
            None => Some(Change::New),
            Some(p) if is_failure(b.status) && is_failure(p.status) => Some(Change::StillFailing),
            Some(_) if is_failure(b.status) => Some(Change::NewlyFailing),
            Some(p) if is_success(b.status) && is_failure(p.status) => Some(Change::NewlyFixed),
            Some(_) => None,
        };
        if let Some(change) = change {
            out.push(AttributeChange {
                change,
                attribute: (*attr).to_owned(),
                drv_path: b.drv_path.clone(),
                status: b.status,
                previous_status: before.get(attr).map(|p| p.status),
            });
        }
    }
    for (attr, p) in &before {
        if !now.contains_key(attr) {
            out.push(AttributeChange {
                change: Change::Removed,
                attribute: (*attr).to_owned(),
                drv_path: p.drv_path.clone(),
                status: p.status,
                previous_status: Some(p.status),
            });
        }
    }
    out.sort_by(|a, b| a.change.cmp(&b.change).then_with(|| a.attribute.cmp(&b.attribute)));
    out
}

/// A failed build and the builds that did not run because of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootCause {
    /// The `.drv` of the build that failed by itself; `None` for dependency failures whose failed dependency
    /// is not among the evaluation's builds.
    pub cause: Option<String>,
    /// The dependency-failed builds it broke, by `.drv` path.
    pub dependents: Vec<String>,
}

/// Groups an evaluation's failures by root cause: every `Failed` build is a cause; a `DependencyFailed` build
/// belongs to each failed build it depends on, through other dependency-failed builds. `builds` are the
/// evaluation's (`.drv` path, status); `inputs` the input `.drv`s of the dependency-failed ones. The causes
/// that broke the most come first; the unknown cause last.
pub fn root_causes(builds: &[(String, BuildStatus)], inputs: &HashMap<String, Vec<String>>) -> Vec<RootCause> {
    let status: HashMap<&str, BuildStatus> = builds.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    let mut memo: HashMap<String, BTreeSet<String>> = HashMap::new();
    fn causes_of(
        drv: &str,
        status: &HashMap<&str, BuildStatus>,
        inputs: &HashMap<String, Vec<String>>,
        memo: &mut HashMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
    ) -> BTreeSet<String> {
        if let Some(known) = memo.get(drv) {
            return known.clone();
        }
        let mut out = BTreeSet::new();
        if !seen.insert(drv.to_owned()) {
            return out;
        }
        for input in inputs.get(drv).into_iter().flatten() {
            match status.get(input.as_str()) {
                Some(BuildStatus::Failed) => {
                    out.insert(input.clone());
                }
                Some(BuildStatus::DependencyFailed) => out.extend(causes_of(input, status, inputs, memo, seen)),
                _ => {}
            }
        }
        memo.insert(drv.to_owned(), out.clone());
        out
    }
    let mut groups: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for (drv, s) in builds {
        if *s == BuildStatus::Failed {
            groups.entry(Some(drv.clone())).or_default();
        }
    }
    for (drv, s) in builds {
        if *s != BuildStatus::DependencyFailed {
            continue;
        }
        let causes = causes_of(drv, &status, inputs, &mut memo, &mut BTreeSet::new());
        if causes.is_empty() {
            groups.entry(None).or_default().push(drv.clone());
        }
        for c in causes {
            groups.entry(Some(c)).or_default().push(drv.clone());
        }
    }
    let mut out: Vec<RootCause> = groups
        .into_iter()
        .map(|(cause, dependents)| RootCause { cause, dependents })
        .collect();
    out.sort_by(|a, b| {
        a.cause
            .is_none()
            .cmp(&b.cause.is_none())
            .then_with(|| b.dependents.len().cmp(&a.dependents.len()))
            .then_with(|| a.cause.cmp(&b.cause))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use BuildStatus::*;

    fn at(attribute: &str, status: BuildStatus) -> AttributeBuild {
        AttributeBuild {
            attribute: attribute.to_owned(),
            drv_path: format!("/nix/store/{attribute}.drv"),
            status,
        }
    }

    #[test]
    fn attributes_are_sorted_into_what_broke_what_was_fixed_what_still_fails_and_what_came_and_went() {
        let before = [
            at("a", Completed),
            at("b", Failed),
            at("c", Failed),
            at("gone", Completed),
            at("same", Completed),
        ];
        let now = [
            at("a", Failed),
            at("b", Substituted),
            at("c", DependencyFailed),
            at("fresh", Queued),
            at("same", Completed),
        ];
        let names: Vec<(Change, String, Option<BuildStatus>)> = compare(&before, &now)
            .into_iter()
            .map(|c| (c.change, c.attribute, c.previous_status))
            .collect();
        assert_eq!(
            names,
            vec![
                (Change::NewlyFailing, "a".to_owned(), Some(Completed)),
                (Change::NewlyFixed, "b".to_owned(), Some(Failed)),
                (Change::StillFailing, "c".to_owned(), Some(Failed)),
                (Change::New, "fresh".to_owned(), None),
                (Change::Removed, "gone".to_owned(), Some(Completed)),
            ]
        );
    }

    #[test]
    fn a_build_still_running_is_not_fixed_yet() {
        assert_eq!(compare(&[at("a", Failed)], &[at("a", Building)]), vec![]);
    }

    #[test]
    fn dependency_failures_point_at_the_failed_build_below_them() {
        let builds: Vec<(String, BuildStatus)> = [
            ("lib", Failed),
            ("mid", DependencyFailed),
            ("app", DependencyFailed),
            ("other", Failed),
            ("orphan", DependencyFailed),
            ("ok", Completed),
        ]
        .into_iter()
        .map(|(d, s)| (d.to_owned(), s))
        .collect();
        let inputs: HashMap<String, Vec<String>> = [
            ("mid", vec!["lib", "ok"]),
            ("app", vec!["mid"]),
            ("orphan", vec!["elsewhere"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
        let groups = root_causes(&builds, &inputs);
        let shown: Vec<(Option<&str>, Vec<&str>)> = groups
            .iter()
            .map(|g| (g.cause.as_deref(), g.dependents.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (Some("lib"), vec!["mid", "app"]),
                (Some("other"), vec![]),
                (None, vec!["orphan"])
            ]
        );
    }
}

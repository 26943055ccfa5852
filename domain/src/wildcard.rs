//! Attribute selection: a project's wildcard such as `packages.x86_64-linux.*, checks.*.*, !checks.*.slow`
//! picks the flake attributes an evaluation builds. Each pattern is a dot-separated attribute path whose
//! segments are names or `*` (any one attribute); a leading `!` excludes what it matches.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wildcard {
    include: Vec<Vec<Segment>>,
    exclude: Vec<Vec<Segment>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Any,
    Name(String),
}

impl Wildcard {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (target, pattern) = match raw.strip_prefix('!') {
                Some(rest) => (&mut exclude, rest.trim()),
                None => (&mut include, raw),
            };
            let segments = pattern
                .split('.')
                .map(|seg| match seg {
                    "*" => Ok(Segment::Any),
                    "" => Err(format!("pattern '{raw}' has an empty attribute name")),
                    name if name.chars().all(|c| c.is_ascii_alphanumeric() || "_-'".contains(c)) => {
                        Ok(Segment::Name(name.to_owned()))
                    }
                    name => Err(format!("pattern '{raw}': '{name}' is not an attribute name or '*'")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            target.push(segments);
        }
        if include.is_empty() {
            return Err("the wildcard selects nothing: give at least one pattern such as 'packages.*.*'".into());
        }
        Ok(Self { include, exclude })
    }

    /// Whether the attribute path (already split into names) is selected.
    pub fn matches(&self, path: &[&str]) -> bool {
        let hit = |p: &Vec<Segment>| {
            p.len() == path.len()
                && p.iter().zip(path).all(|(s, a)| match s {
                    Segment::Any => true,
                    Segment::Name(n) => n == a,
                })
        };
        self.include.iter().any(hit) && !self.exclude.iter().any(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_table() {
        let w = Wildcard::parse("packages.x86_64-linux.*, checks.*.*, !checks.*.slow").unwrap();
        let table: &[(&[&str], bool)] = &[
            (&["packages", "x86_64-linux", "hello"], true),
            (&["packages", "aarch64-linux", "hello"], false),
            (&["checks", "x86_64-linux", "fmt"], true),
            (&["checks", "x86_64-linux", "slow"], false),
            (&["checks", "x86_64-linux"], false),
            (&["devShells", "x86_64-linux", "default"], false),
        ];
        for (path, want) in table {
            assert_eq!(w.matches(path), *want, "{path:?}");
        }
    }

    #[test]
    fn bad_patterns_are_explained() {
        assert!(Wildcard::parse("").is_err());
        assert!(Wildcard::parse("!checks.*.*").is_err());
        assert!(Wildcard::parse("packages..x").unwrap_err().contains("empty attribute"));
        assert!(Wildcard::parse("packages.$x").unwrap_err().contains("'$x'"));
    }
}

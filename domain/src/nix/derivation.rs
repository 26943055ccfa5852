//! A store derivation (`.drv` file) as Nix writes it, in its ATerm form:
//! `Derive([outputs],[input derivations],[input sources],"system","builder",[args],[env])`, where an output is
//! `("name","path","hashAlgo","hash")` (the path empty for a floating content-addressed output), an input
//! derivation `("path.drv",["output",…])`, and strings escape `"`, `\`, newline, carriage return and tab.
//! Read by the worker to learn what a build needs without asking Nix.

use std::collections::BTreeMap;

/// What a `.drv` file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derivation {
    /// Output name → its store path (empty when not known before building: a floating content-addressed output).
    pub outputs: BTreeMap<String, String>,
    /// Input derivation → the outputs of it this one uses.
    pub input_drvs: BTreeMap<String, Vec<String>>,
    pub input_srcs: Vec<String>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Parses a `.drv` file's text; the error says where it is not what Nix writes.
pub fn parse_derivation(text: &[u8]) -> Result<Derivation, String> {
    let mut p = Parser { text, at: 0 };
    p.expect(b"Derive(")?;
    let mut d = Derivation::default();
    p.list(|p| {
        p.expect(b"(")?;
        let name = p.string()?;
        p.expect(b",")?;
        let path = p.string()?;
        p.expect(b",")?;
        p.string()?;
        p.expect(b",")?;
        p.string()?;
        p.expect(b")")?;
        d.outputs.insert(name, path);
        Ok(())
    })?;
    p.expect(b",")?;
    p.list(|p| {
        p.expect(b"(")?;
        let path = p.string()?;
        p.expect(b",")?;
        let mut outputs = Vec::new();
        p.list(|p| {
            outputs.push(p.string()?);
            Ok(())
        })?;
        p.expect(b")")?;
        d.input_drvs.insert(path, outputs);
        Ok(())
    })?;
    p.expect(b",")?;
    p.list(|p| {
        d.input_srcs.push(p.string()?);
        Ok(())
    })?;
    p.expect(b",")?;
    d.system = p.string()?;
    p.expect(b",")?;
    d.builder = p.string()?;
    p.expect(b",")?;
    p.list(|p| {
        d.args.push(p.string()?);
        Ok(())
    })?;
    p.expect(b",")?;
    p.list(|p| {
        p.expect(b"(")?;
        let key = p.string()?;
        p.expect(b",")?;
        let value = p.string()?;
        p.expect(b")")?;
        d.env.insert(key, value);
        Ok(())
    })?;
    p.expect(b")")?;
    if p.at != text.len() {
        return Err(format!("unexpected text after the derivation at byte {}", p.at));
    }
    Ok(d)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn expect(&mut self, what: &[u8]) -> Result<(), String> {
        if self.text[self.at..].starts_with(what) {
            self.at += what.len();
            Ok(())
        } else {
            Err(format!(
                "expected '{}' at byte {}",
                String::from_utf8_lossy(what),
                self.at
            ))
        }
    }

    /// `[item,item,…]`, each read by `item`.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), String>) -> Result<(), String> {
        self.expect(b"[")?;
        if self.expect(b"]").is_ok() {
            return Ok(());
        }
        loop {
            item(self)?;
            if self.expect(b",").is_err() {
                return self.expect(b"]");
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b"\"")?;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.text.get(self.at) else {
                return Err("a string does not end".into());
            };
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.text.get(self.at) else {
                        return Err("a string does not end".into());
                    };
                    self.at += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| format!("a string before byte {} is not UTF-8", self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Nix 2.8 (`nix-instantiate` of a derivation with two outputs, an input derivation, a source
    /// from `builtins.toFile` and escaped characters in a string).
    const DRV: &str = r#"Derive([("dev","/nix/store/lpnm8540cjx9s5c9hxrrh8gb95fg3v9l-two-dev","",""),("out","/nix/store/knnf1zm867wmy6amjadiim3q1y10hzjv-two","","")],[("/nix/store/2al1bij22scf6znn9zp7y98f8z4xpf00-dep.drv",["out"])],["/nix/store/45czc3q8d207c6a4xinpwmka2nshwyh0-b.sh"],"x86_64-linux","/bin/sh",["-c","echo \"a\\b\" > $out\n\ttab; /nix/store/45czc3q8d207c6a4xinpwmka2nshwyh0-b.sh"],[("builder","/bin/sh"),("dep","/nix/store/1n77x7sl82amha97zgxj1dl360a8ss69-dep"),("dev","/nix/store/lpnm8540cjx9s5c9hxrrh8gb95fg3v9l-two-dev"),("name","two"),("out","/nix/store/knnf1zm867wmy6amjadiim3q1y10hzjv-two"),("outputs","out dev"),("system","x86_64-linux")])"#;

    #[test]
    fn reads_what_nix_writes() {
        let d = parse_derivation(DRV.as_bytes()).unwrap();
        assert_eq!(
            d.outputs,
            BTreeMap::from([
                (
                    "dev".to_owned(),
                    "/nix/store/lpnm8540cjx9s5c9hxrrh8gb95fg3v9l-two-dev".to_owned()
                ),
                (
                    "out".to_owned(),
                    "/nix/store/knnf1zm867wmy6amjadiim3q1y10hzjv-two".to_owned()
                ),
            ])
        );
        assert_eq!(
            d.input_drvs,
            BTreeMap::from([(
                "/nix/store/2al1bij22scf6znn9zp7y98f8z4xpf00-dep.drv".to_owned(),
                vec!["out".to_owned()]
            )])
        );
        assert_eq!(d.input_srcs, ["/nix/store/45czc3q8d207c6a4xinpwmka2nshwyh0-b.sh"]);
        assert_eq!(d.system, "x86_64-linux");
        assert_eq!(d.builder, "/bin/sh");
        assert_eq!(
            d.args,
            [
                "-c",
                "echo \"a\\b\" > $out\n\ttab; /nix/store/45czc3q8d207c6a4xinpwmka2nshwyh0-b.sh"
            ]
        );
        assert_eq!(d.env["outputs"], "out dev");
    }

    #[test]
    fn empty_lists_and_floating_outputs() {
        let d = parse_derivation(br#"Derive([("out","","r:sha256","")],[],[],"s","b",[],[])"#).unwrap();
        assert_eq!(d.outputs["out"], "");
        assert!(d.input_drvs.is_empty() && d.input_srcs.is_empty() && d.env.is_empty());
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b""[..],
            b"Derive([],[],[],\"s\",\"b\",[],[]",
            b"Derive([],[],[],\"s\",\"b\",[],[]) ",
            b"DrvWithVersion(\"xp-dyn-drv\",[],[],[],\"s\",\"b\",[],[])",
            b"Derive([(\"out\",\"/x\",\"\")],[],[],\"s\",\"b\",[],[])",
            b"Derive([],[],[\"unterminated],\"s\",\"b\",[],[])",
            b"Derive([],[],[\"\\",
        ] {
            assert!(parse_derivation(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

//! Test results across tiers: every check passes, fails or is skipped with a reason, and the run
//! ends with one summary line `xtask: N passed, M failed, K skipped`.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

#[derive(Default)]
pub struct Report {
    pub results: Vec<(String, Verdict)>,
}

impl Report {
    pub fn pass(&mut self, name: &str) {
        println!("xtask: PASS {name}");
        self.results.push((name.into(), Verdict::Pass));
    }
    pub fn fail(&mut self, name: &str, why: impl Into<String>) {
        let why = why.into();
        println!("xtask: FAIL {name}: {why}");
        self.results.push((name.into(), Verdict::Fail(why)));
    }
    pub fn skip(&mut self, name: &str, why: impl Into<String>) {
        let why = why.into();
        println!("xtask: {name}: skipped: {why}");
        self.results.push((name.into(), Verdict::Skip(why)));
    }
    /// Record a check: pass when `ok`, else fail with `why`.
    pub fn check(&mut self, name: &str, ok: bool, why: impl Into<String>) {
        if ok {
            self.pass(name)
        } else {
            self.fail(name, why)
        }
    }
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for (_, v) in &self.results {
            match v {
                Verdict::Pass => c.0 += 1,
                Verdict::Fail(_) => c.1 += 1,
                Verdict::Skip(_) => c.2 += 1,
            }
        }
        c
    }
    pub fn failed(&self) -> bool {
        self.counts().1 > 0
    }
    /// The summary line, alone on its line.
    pub fn summary(&self) -> String {
        let (p, f, s) = self.counts();
        format!("xtask: {p} passed, {f} failed, {s} skipped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_summary() {
        let mut r = Report::default();
        r.pass("a");
        r.check("b", false, "broken");
        r.skip("c", "no qemu");
        r.check("d", true, "unused");
        assert_eq!(r.counts(), (2, 1, 1));
        assert!(r.failed());
        assert_eq!(r.summary(), "xtask: 2 passed, 1 failed, 1 skipped");
        assert_eq!(r.results[1].1, Verdict::Fail("broken".into()));
    }

    #[test]
    fn empty_is_not_failed() {
        let r = Report::default();
        assert!(!r.failed());
        assert_eq!(r.summary(), "xtask: 0 passed, 0 failed, 0 skipped");
    }
}

//! The one glob matcher of every setting that takes patterns: placement rules (`[[storage.placement]]`), budgets'
//! filters, price aliases and provider-cloud rules.
//!
//! `*` matches any run of characters (also none). Two dialects, each kept as its settings were documented:
//! placement rules also take `?` for one character and compare exactly (the values are stored as they are); the
//! pricing and budget settings compare ignoring case and take `?` literally (provider and model names carry no `?`).
//! Matching is iterative with one backtrack point: linear in practice, never exponential, on any pattern.

/// How a pattern reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `*` and `?`, case-sensitive: placement rules.
    Exact,
    /// `*` only, case-insensitive: budgets, price aliases, provider clouds.
    IgnoreCase,
}

/// Whether `text` matches `pattern` in `dialect`.
pub fn matches(dialect: Dialect, pattern: &str, text: &str) -> bool {
    match dialect {
        // Called per row (placement) and per span (budgets, provider rules): ASCII, the common case, matches
        // without allocating.
        Dialect::Exact if pattern.is_ascii() && text.is_ascii() => {
            match_by(pattern.as_bytes(), text.as_bytes(), |p, t| p == t, b'*', Some(b'?'))
        }
        Dialect::Exact => {
            let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
            match_by(&p, &t, |p, t| p == t, '*', Some('?'))
        }
        Dialect::IgnoreCase if pattern.is_ascii() && text.is_ascii() => {
            match_by(pattern.as_bytes(), text.as_bytes(), |p, t| p.eq_ignore_ascii_case(t), b'*', None)
        }
        Dialect::IgnoreCase => {
            let p: Vec<char> = pattern.to_lowercase().chars().collect();
            let t: Vec<char> = text.to_lowercase().chars().collect();
            match_by(&p, &t, |p, t| p == t, '*', None)
        }
    }
}

/// Glob matching over `p` and `t` with backtracking to the last `star`; `any` matches one element.
fn match_by<T: Copy + PartialEq>(p: &[T], t: &[T], eq: impl Fn(&T, &T) -> bool, star: T, any: Option<T>) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let (mut last_star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != star && (Some(p[pi]) == any || eq(&p[pi], &t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star {
            last_star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = last_star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == star)
}

#[cfg(test)]
mod tests {
    use super::Dialect::{Exact, IgnoreCase};
    use super::*;

    #[test]
    fn placement_globs_take_question_marks_and_case() {
        assert!(matches(Exact, "eu-*", "eu-west-1"));
        assert!(!matches(Exact, "eu-*", "us-east-1"));
        assert!(matches(Exact, "*-west-?", "eu-west-1"));
        assert!(!matches(Exact, "*-west-?", "eu-west-10"));
        assert!(!matches(Exact, "EU-*", "eu-west-1"));
        assert!(matches(Exact, "*", ""));
        assert!(matches(Exact, "é?-*", "éu-west"));
    }

    #[test]
    fn pricing_globs_ignore_case_and_read_question_marks_literally() {
        assert!(matches(IgnoreCase, "azure.ai.*", "azure.ai.openai"));
        assert!(matches(IgnoreCase, "*", ""));
        assert!(matches(IgnoreCase, "my-*-deploy", "MY-gpt-DEPLOY"));
        assert!(!matches(IgnoreCase, "gcp.*", "aws.bedrock"));
        assert!(!matches(IgnoreCase, "a*b", "acbd"));
        assert!(!matches(IgnoreCase, "a?c", "abc"));
        assert!(matches(IgnoreCase, "a?c", "A?C"));
        assert!(matches(IgnoreCase, "ÉU-*", "éu-west"));
    }

    /// A pattern built to make a naive matcher exponential answers at once.
    #[test]
    fn hostile_patterns_stay_linear() {
        let pattern = format!("{}b", "a*".repeat(200));
        let text = "a".repeat(10_000);
        for dialect in [Exact, IgnoreCase] {
            assert!(!matches(dialect, &pattern, &text));
        }
    }
}

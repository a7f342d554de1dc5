//! `SCAN … MATCH pattern`: Redis's glob patterns over bytes. `*` any run,
//! `?` any one byte, `[abc]`, `[^abc]`, `[a-z]` a class, `\x` the byte `x`.
//! Matching backtracks only to the last `*` (every other token takes exactly
//! one byte), so it costs at most pattern × key steps whatever a client sends.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Byte(u8),
    Class { negated: bool, ranges: Vec<(u8, u8)> },
}

impl Token {
    fn matches(&self, b: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(x) => *x == b,
            Token::Class { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negated,
        }
    }
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern` (every byte string is a pattern: an unclosed `[`
    /// takes the rest, a trailing `\` is itself, as in Redis).
    pub fn new(pattern: &[u8]) -> Glob {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            let t = match pattern[i] {
                b'*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                    continue;
                }
                b'?' => Token::Any,
                b'\\' if i + 1 < pattern.len() => {
                    i += 1;
                    Token::Byte(pattern[i])
                }
                b'[' => {
                    i += 1;
                    let negated = pattern.get(i) == Some(&b'^');
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    while i < pattern.len() && pattern[i] != b']' {
                        if pattern[i] == b'\\' && i + 1 < pattern.len() {
                            i += 1;
                            ranges.push((pattern[i], pattern[i]));
                        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
                            let (a, b) = (pattern[i], pattern[i + 2]);
                            ranges.push((a.min(b), a.max(b)));
                            i += 2;
                        } else {
                            ranges.push((pattern[i], pattern[i]));
                        }
                        i += 1;
                    }
                    Token::Class { negated, ranges }
                }
                b => Token::Byte(b),
            };
            tokens.push(t);
            i += 1;
        }
        Glob { tokens }
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &[u8]) -> bool {
        self.steps(key).0
    }

    /// Whether `key` matches, and the steps it took.
    fn steps(&self, key: &[u8]) -> (bool, usize) {
        let (mut t, mut k, mut steps) = (0, 0, 0);
        // After the last `*`: the token after it, and the key position it was tried at.
        let mut star: Option<(usize, usize)> = None;
        while k < key.len() {
            steps += 1;
            match self.tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t + 1, k));
                    t += 1;
                }
                Some(tok) if tok.matches(key[k]) => {
                    t += 1;
                    k += 1;
                }
                _ => match star {
                    Some((st, sk)) => {
                        // Let the star take one more byte.
                        t = st;
                        k = sk + 1;
                        star = Some((st, sk + 1));
                    }
                    None => return (false, steps),
                },
            }
        }
        (self.tokens[t..].iter().all(|tok| *tok == Token::Star), steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, k: &str) -> bool {
        Glob::new(p.as_bytes()).matches(k.as_bytes())
    }

    #[test]
    fn patterns_match_as_in_redis() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:42"));
        assert!(!m("user:*", "users:42"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(!m("h[a-c]llo", "hdllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*c", "xxaxxbxxc"));
        assert!(!m("*a*b*c", "xxaxxbxxcx"));
        assert!(m("k[ab", "kb"), "an unclosed class takes the rest of the pattern");
        assert!(m("*1", "111"));
        assert!(!m("", "a"));
    }

    #[test]
    fn a_hostile_pattern_costs_pattern_times_key_steps() {
        let p = "*a".repeat(500) + "b";
        let k = "a".repeat(10_000);
        let g = Glob::new(p.as_bytes());
        let (matched, steps) = g.steps(k.as_bytes());
        assert!(!matched);
        assert!(steps <= (g.tokens.len() + 1) * (k.len() + 1), "{steps} steps");
    }
}

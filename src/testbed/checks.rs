//! The gold's text checks: pure functions of the response text (and the prompt's spec), each a
//! component of the gold reward in [0, 1] (`super::gold` documents how they combine).
use super::prompts::Format;
use std::collections::HashSet;

/// `clamp((v - lo) / (hi - lo), 0, 1)`.
pub fn ramp(v: f64, lo: f64, hi: f64) -> f64 {
    ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
}

/// If `line` starts with a list marker (`-`, `*`, `+`, a bullet character, or `1.` / `1)`), the rest
/// of the line.
pub fn strip_bullet(line: &str) -> Option<&str> {
    let l = line.trim_start();
    for m in ["- ", "* ", "+ ", "• ", "· ", "– "] {
        if let Some(rest) = l.strip_prefix(m) {
            return Some(rest);
        }
    }
    let digits = l.chars().take_while(|c| c.is_ascii_digit()).count();
    if (1..=2).contains(&digits) {
        let rest = &l[digits..];
        if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return Some(r);
        }
    }
    None
}

/// The response's words, lowercased, punctuation trimmed from both ends; list markers are not words.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let body = strip_bullet(line).unwrap_or(line);
        for tok in body.split_whitespace() {
            let w = tok.trim_matches(|c: char| !c.is_alphanumeric());
            if !w.is_empty() {
                out.push(w.to_lowercase());
            }
        }
    }
    out
}

/// Distinct n-gram ratio: unique n-grams / n-grams; 1 when there are fewer than `n` words.
pub fn distinct_n(words: &[String], n: usize) -> f64 {
    if n == 0 || words.len() < n {
        return 1.0;
    }
    let grams: Vec<&[String]> = words.windows(n).collect();
    let unique: std::collections::HashSet<&[String]> = grams.iter().copied().collect();
    unique.len() as f64 / grams.len() as f64
}

/// Whether `word` is `req` or a simple inflection of it (plural, past, -ing, -er, -ly, possessive).
pub fn matches_word(word: &str, req: &str) -> bool {
    let (word, req) = (word.to_lowercase(), req.to_lowercase());
    if word == req {
        return true;
    }
    const SUFFIXES: &[&str] = &["s", "es", "ed", "d", "ing", "er", "ers", "ly", "'s", "y", "ful"];
    if let Some(rest) = word.strip_prefix(req.as_str()) {
        if SUFFIXES.contains(&rest) {
            return true;
        }
        // Doubled final consonant: "plan" -> "planning", "shop" -> "shopped".
        let last = req.chars().last().unwrap_or(' ');
        if let Some(r) = rest.strip_prefix(last) {
            if ["ing", "ed", "er", "ers"].contains(&r) {
                return true;
            }
        }
    }
    // "bake" -> "baking", "berry" -> "berries".
    for (drop, adds) in [('e', &["ing", "ed", "er", "ers"][..]), ('y', &["ies", "ied", "ier"][..])] {
        if let Some(stem) = req.strip_suffix(drop) {
            if let Some(rest) = word.strip_prefix(stem) {
                if adds.contains(&rest) {
                    return true;
                }
            }
        }
    }
    false
}

/// Fraction of `required` found among `words` (1 when nothing is required).
pub fn required_words_score(words: &[String], required: &[String]) -> f64 {
    if required.is_empty() {
        return 1.0;
    }
    let found = required.iter().filter(|r| words.iter().any(|w| matches_word(w, r))).count();
    found as f64 / required.len() as f64
}

/// Sentences: pieces ended by `.`, `!`, `?` (followed by a space, a newline or the end) or by a
/// line break, counted when they contain a letter or digit.
pub fn count_sentences(text: &str) -> usize {
    let mut n = 0;
    for line in text.lines() {
        let body = strip_bullet(line).unwrap_or(line);
        let chars: Vec<char> = body.chars().collect();
        let mut has_word = false;
        for (i, &c) in chars.iter().enumerate() {
            if c.is_alphanumeric() {
                has_word = true;
            }
            let end = matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|c| c.is_whitespace());
            if end && has_word {
                n += 1;
                has_word = false;
            }
        }
        if has_word {
            n += 1;
        }
    }
    n
}

/// How well the layout follows `format` (1 for `None`):
/// - `Bullets { n }`: with k bullet lines, `max(0, 1 - |k - n| / n)` (0 without bullets), times
///   0.8 for each non-bullet line beyond two (an intro and an outro line are fine);
/// - `Paragraph`: `1 / (non-empty lines)`, halved if any line is a bullet;
/// - `Sentence`: `1 / sentences` (see [`count_sentences`]).
pub fn format_score(text: &str, format: Option<&Format>) -> f64 {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return 0.0;
    }
    let bullets = lines.iter().filter(|l| strip_bullet(l).is_some()).count();
    match format {
        None => 1.0,
        Some(Format::Bullets { n }) => {
            let n = (*n).max(1) as f64;
            if bullets == 0 {
                return 0.0;
            }
            let base = (1.0 - (bullets as f64 - n).abs() / n).max(0.0);
            let others = (lines.len() - bullets).saturating_sub(2);
            base * 0.8f64.powi(others as i32)
        }
        Some(Format::Paragraph) => {
            let s = 1.0 / lines.len() as f64;
            if bullets > 0 {
                0.5 * s
            } else {
                s
            }
        }
        Some(Format::Sentence) => 1.0 / count_sentences(text).max(1) as f64,
    }
}

/// Share of `response`'s word trigrams that also occur in `prompt`'s words (0 under 3 words).
pub fn copied_share(response: &[String], prompt: &[String]) -> f64 {
    if response.len() < 3 {
        return 0.0;
    }
    let in_prompt: HashSet<&[String]> = prompt.windows(3).collect();
    let grams: Vec<&[String]> = response.windows(3).collect();
    grams.iter().filter(|g| in_prompt.contains(*g)).count() as f64 / grams.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_bullets() {
        assert_eq!(words("- Hello, world!\n2. It's 5 o'clock."), ["hello", "world", "it's", "5", "o'clock"]);
        assert_eq!(strip_bullet("  * item"), Some("item"));
        assert_eq!(strip_bullet("12) item"), Some("item"));
        assert_eq!(strip_bullet("2024 was"), None);
        assert_eq!(strip_bullet("-item"), None);
    }

    #[test]
    fn distinct_ratios() {
        let w = words("a b c a b c");
        assert_eq!(distinct_n(&w, 2), 3.0 / 5.0);
        assert_eq!(distinct_n(&w, 3), 3.0 / 4.0);
        assert_eq!(distinct_n(&w[..1], 2), 1.0);
    }

    #[test]
    fn inflections() {
        for (w, r) in
            [("beans", "bean"), ("roasted", "roast"), ("baking", "bake"), ("berries", "berry"), ("planning", "plan"), ("Roast", "roast")]
        {
            assert!(matches_word(w, r), "{w} {r}");
        }
        for (w, r) in [("bean", "beans"), ("roadster", "road"), ("cat", "catalog")] {
            assert!(!matches_word(w, r), "{w} {r}");
        }
        assert_eq!(required_words_score(&words("I roast beans."), &["beans".into(), "roast".into()]), 1.0);
        assert_eq!(required_words_score(&words("I grind beans."), &["beans".into(), "roast".into()]), 0.5);
    }

    #[test]
    fn formats() {
        let b = Format::Bullets { n: 3 };
        assert_eq!(format_score("Facts:\n- a\n- b\n- c", Some(&b)), 1.0);
        assert!((format_score("- a\n- b", Some(&b)) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(format_score("a b c", Some(&b)), 0.0);
        assert_eq!(format_score("x\n- a\n- b\n- c\ny\nz", Some(&b)), 0.8);
        assert_eq!(format_score("One para. Two sentences.", Some(&Format::Paragraph)), 1.0);
        assert_eq!(format_score("One.\n\nTwo.", Some(&Format::Paragraph)), 0.5);
        assert_eq!(format_score("It is 3.5 cm long.", Some(&Format::Sentence)), 1.0);
        assert_eq!(format_score("One. Two! Three?", Some(&Format::Sentence)), 1.0 / 3.0);
        assert_eq!(format_score("anything", None), 1.0);
        assert_eq!(count_sentences("- a b\n- c. d"), 3);
    }
}

//! Plain-text rendering shared by the channels without markup (iMessage, the web chat).
//!
//! What it does: [`clean`] turns control characters other than newline, and the
//! bidirectional-override characters (which could make a parameter read differently from what
//! it is), into spaces; [`cut`] bounds a text in characters with a trailing `…`;
//! [`plan_body`] writes a plan's summary and each step (agent, action, effect, exact canonical
//! parameters, why), cleaned. Each channel adds its own footer and bound.
//!
//! What it does not do: no markup and no escaping (there is no markup to escape); no I/O.

use protocol::message::{Effect, PlanProposal};

/// Replaces control characters (except newline) and bidirectional controls with spaces.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if (c.is_control() && c != '\n') || bidi {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `s` cut to at most `max` characters, the last one `…` if anything was cut.
pub fn cut(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// "Plan: <summary>" and the numbered steps, each with its parameters and why.
pub fn plan_body(p: &PlanProposal) -> String {
    let mut text = format!("Plan: {}\n", clean(&p.summary));
    for (i, s) in p.steps.iter().enumerate() {
        let params =
            String::from_utf8(protocol::args::canonical_json(&s.params)).unwrap_or_default();
        let effect = match s.effect {
            Effect::Read => "reads",
            Effect::Change => "changes",
        };
        text.push_str(&format!(
            "\n{}. {} {} ({effect})\n   Params: {}\n   Why: {}\n",
            i + 1,
            s.agent.as_str(),
            s.action.as_str(),
            clean(&params),
            clean(&s.why),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_become_spaces_and_cuts_are_marked() {
        assert_eq!(clean("a\u{7}b\nc\u{202E}d\u{2066}e"), "a b\nc d e");
        assert_eq!(cut("abcdef".to_owned(), 4), "abc…");
        assert_eq!(cut("abc".to_owned(), 4), "abc");
    }
}

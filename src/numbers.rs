//! Numbers spoken by joining prompts: case numbers digit by digit, counts (minutes, positions,
//! days) as words, in English and Spanish. Pure; returns prompt ids for `MediaCommand::Play`.
//! Rules match prompts/README.md, which lists the recorded number words per language.

/// Prompt ids that speak `n` as a number ("one hundred twenty-five"), for n below 10,000.
/// Larger values are read digit by digit rather than wrongly.
pub fn say_number(n: u32, language: &str) -> Vec<String> {
    if n >= 10_000 {
        return say_digits(&n.to_string());
    }
    let mut out = Vec::new();
    match language {
        "es" => spanish(n, &mut out),
        _ => english(n, &mut out),
    }
    out
}

/// Prompt ids that read a string of digits one by one (case numbers); other characters are skipped.
pub fn say_digits(digits: &str) -> Vec<String> {
    digits
        .chars()
        .filter(char::is_ascii_digit)
        .map(|d| format!("digit_{d}"))
        .collect()
}

fn below_hundred_en(n: u32, out: &mut Vec<String>) {
    match n {
        0..=9 => out.push(format!("digit_{n}")),
        10..=19 => out.push(format!("number_{n}")),
        _ => {
            out.push(format!("number_{}", n / 10 * 10));
            if n % 10 > 0 {
                out.push(format!("digit_{}", n % 10));
            }
        }
    }
}

fn english(n: u32, out: &mut Vec<String>) {
    let thousands = n / 1000;
    let hundreds = n / 100 % 10;
    let rest = n % 100;
    if thousands > 0 {
        out.push(format!("digit_{thousands}"));
        out.push("thousand".into());
    }
    if hundreds > 0 {
        out.push(format!("digit_{hundreds}"));
        out.push("hundred".into());
    }
    if rest > 0 || n == 0 {
        below_hundred_en(rest, out);
    }
}

fn below_hundred_es(n: u32, out: &mut Vec<String>) {
    match n {
        0..=9 => out.push(format!("digit_{n}")),
        10..=29 => out.push(format!("number_{n}")),
        _ => {
            out.push(format!("number_{}", n / 10 * 10));
            if n % 10 > 0 {
                out.push("and".into());
                out.push(format!("digit_{}", n % 10));
            }
        }
    }
}

fn spanish(n: u32, out: &mut Vec<String>) {
    let thousands = n / 1000;
    let hundreds = n / 100 % 10;
    let rest = n % 100;
    match thousands {
        0 => {}
        1 => out.push("thousand".into()),
        t => {
            out.push(format!("digit_{t}"));
            out.push("thousand".into());
        }
    }
    match (hundreds, rest) {
        (0, _) => {}
        (1, 0) => out.push("hundred".into()),
        (1, _) => out.push("hundred_compound".into()),
        (h, _) => out.push(format!("number_{h}00")),
    }
    if rest > 0 || n == 0 {
        below_hundred_es(rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(n: u32, language: &str) -> String {
        say_number(n, language).join(" ")
    }

    #[test]
    fn english_numbers() {
        assert_eq!(joined(0, "en"), "digit_0");
        assert_eq!(joined(17, "en"), "number_17");
        assert_eq!(joined(40, "en"), "number_40");
        assert_eq!(joined(125, "en"), "digit_1 hundred number_20 digit_5");
        assert_eq!(joined(2005, "en"), "digit_2 thousand digit_5");
        assert_eq!(
            joined(9999, "en"),
            "digit_9 thousand digit_9 hundred number_90 digit_9"
        );
    }

    #[test]
    fn spanish_numbers() {
        assert_eq!(joined(21, "es"), "number_21");
        assert_eq!(joined(31, "es"), "number_30 and digit_1");
        assert_eq!(joined(100, "es"), "hundred");
        assert_eq!(joined(125, "es"), "hundred_compound number_25");
        assert_eq!(joined(500, "es"), "number_500");
        assert_eq!(joined(1000, "es"), "thousand");
        assert_eq!(
            joined(2342, "es"),
            "digit_2 thousand number_300 number_40 and digit_2"
        );
    }

    #[test]
    fn every_prompt_named_exists() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        for language in ["en", "es"] {
            for n in 0..10_000 {
                for id in say_number(n, language) {
                    assert!(
                        dir.join(language).join(format!("{id}.wav")).is_file(),
                        "{language}/{id}.wav for {n}"
                    );
                }
            }
        }
        assert_eq!(
            say_digits("2026-0042"),
            [
                "digit_2", "digit_0", "digit_2", "digit_6", "digit_0", "digit_0", "digit_4",
                "digit_2"
            ]
        );
    }
}

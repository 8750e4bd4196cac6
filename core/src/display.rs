//! How figures read to people: money, shares (percentages) and latencies, one function each.
//!
//! The dashboard's cells and gauges, the alert messages (log, webhooks), the text figures of `/api/v1/alerts`,
//! the guardrail's reasons, the `alerts` table and the demo's progress line all print through these, so one figure
//! reads the same everywhere, and the precision rule for small amounts is written once.

/// Money in USD: `$1,234.50` with cents from ten cents up; below that two significant digits (`$0.069`, `$0.0012`,
/// `$0.000004`), so a small cap or spend never prints as `$0.00`. Zero is `$0.00`, a negative amount `-$1.20`,
/// a value that is not a number `-`.
pub fn usd(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a == 0.0 {
        return "$0.00".into();
    }
    if a < 0.0995 {
        // Two significant digits, at least two decimals, trailing zeros beyond those dropped.
        let decimals = significant_decimals(a, 2).clamp(2, 12);
        let text = format!("{a:.decimals$}");
        let trimmed = trim_zeros(&text, 2);
        return if trimmed.trim_start_matches(['0', '.']).is_empty() {
            "$0.00".into()
        } else {
            format!("{sign}${trimmed}")
        };
    }
    let cents = (a * 100.0).round();
    let whole = (cents / 100.0).trunc();
    let frac = (cents - whole * 100.0) as u8;
    format!("{sign}${}.{frac:02}", group_thousands(&format!("{whole:.0}")))
}

/// A fraction as a percentage, with the precision its size needs: `0.03` -> `3%`, `0.041` -> `4.1%`,
/// `1.37` -> `137%`, `4994.0` -> `499,400%`, `0.0004` -> `0.04%`. From 1% up one decimal at most, below that two
/// significant digits; trailing zeros are dropped. A value that is not a number prints as `-`.
pub fn percent(fraction: f64) -> String {
    if !fraction.is_finite() {
        return "-".into();
    }
    let p = fraction * 100.0;
    let a = p.abs();
    let sign = if p < 0.0 { "-" } else { "" };
    let body = if a == 0.0 {
        "0".to_string()
    } else if a >= 99.95 {
        group_thousands(&format!("{a:.0}"))
    } else if a >= 0.995 {
        trim_zeros(&format!("{a:.1}"), 0)
    } else {
        let decimals = significant_decimals(a, 2).clamp(1, 12);
        let text = trim_zeros(&format!("{a:.decimals$}"), 0);
        if text == "0" {
            return "0%".into();
        }
        text
    };
    format!("{sign}{body}%")
}

/// A latency given in milliseconds, always with its unit and three significant digits: `0.45 ms`, `73.7 ms`,
/// `812 ms`, `3.45 s`, `11.2 s`, `125 s`. A value that is not a number prints as `-`.
pub fn duration_ms(ms: f64) -> String {
    if !ms.is_finite() {
        return "-".into();
    }
    let a = ms.abs();
    if a == 0.0 {
        "0 ms".into()
    } else if a < 9.995 {
        format!("{ms:.2} ms")
    } else if a < 99.95 {
        format!("{ms:.1} ms")
    } else if a < 999.5 {
        format!("{ms:.0} ms")
    } else if a < 9_995.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if a < 99_950.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{:.0} s", ms / 1000.0)
    }
}

/// Decimals that show `digits` significant digits of `a` (> 0).
fn significant_decimals(a: f64, digits: i32) -> usize {
    (digits - 1 - a.log10().floor() as i32).max(0) as usize
}

/// `text` (digits with an optional decimal point) without trailing zeros beyond `keep` decimals.
fn trim_zeros(text: &str, keep: usize) -> String {
    let Some(dot) = text.find('.') else { return text.to_string() };
    let mut end = text.len();
    while end > dot + 1 + keep && text.as_bytes()[end - 1] == b'0' {
        end -= 1;
    }
    if end == dot + 1 {
        end = dot;
    }
    text[..end].to_string()
}

/// `1234567` -> `1,234,567`.
fn group_thousands(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_keeps_small_amounts_readable() {
        assert_eq!(usd(640.0), "$640.00");
        assert_eq!(usd(1234567.891), "$1,234,567.89");
        assert_eq!(usd(0.69), "$0.69");
        assert_eq!(usd(0.1), "$0.10");
        assert_eq!(usd(0.0999), "$0.10");
        assert_eq!(usd(0.069), "$0.069");
        assert_eq!(usd(0.05), "$0.05");
        assert_eq!(usd(0.004), "$0.004");
        assert_eq!(usd(0.001), "$0.001");
        assert_eq!(usd(0.0012), "$0.0012");
        assert_eq!(usd(0.00123), "$0.0012");
        assert_eq!(usd(0.0000042), "$0.0000042");
        assert_eq!(usd(4.994), "$4.99");
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(1e-15), "$0.00");
        assert_eq!(usd(-1.2), "-$1.20");
        assert_eq!(usd(-0.0012), "-$0.0012");
        assert_eq!(usd(999.999), "$1,000.00");
        assert_eq!(usd(f64::NAN), "-");
    }

    #[test]
    fn percentages_take_the_precision_their_size_needs() {
        assert_eq!(percent(0.03), "3%");
        assert_eq!(percent(0.041), "4.1%");
        assert_eq!(percent(0.8), "80%");
        assert_eq!(percent(0.103), "10.3%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(1.37), "137%");
        assert_eq!(percent(4994.0), "499,400%");
        assert_eq!(percent(0.0004), "0.04%");
        assert_eq!(percent(0.000123), "0.012%");
        assert_eq!(percent(0.00999), "1%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(-0.5), "-50%");
        assert_eq!(percent(f64::INFINITY), "-");
    }

    #[test]
    fn latencies_always_carry_their_unit() {
        assert_eq!(duration_ms(0.0), "0 ms");
        assert_eq!(duration_ms(0.45), "0.45 ms");
        assert_eq!(duration_ms(4.5), "4.50 ms");
        assert_eq!(duration_ms(73.7), "73.7 ms");
        assert_eq!(duration_ms(812.0), "812 ms");
        assert_eq!(duration_ms(999.6), "1.00 s");
        assert_eq!(duration_ms(3450.0), "3.45 s");
        assert_eq!(duration_ms(11_200.0), "11.2 s");
        assert_eq!(duration_ms(125_000.0), "125 s");
        assert_eq!(duration_ms(f64::NAN), "-");
    }
}

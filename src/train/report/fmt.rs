//! Text for the report: HTML escaping, numbers for people ("12,345", "23.4%", "n/a"), and the
//! heat-map tint used by the profile and transition tables.

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escaped text, or an em dash when empty (fields of a default report are empty strings).
pub(crate) fn text_or_dash(s: &str) -> String {
    if s.trim().is_empty() {
        "—".to_string()
    } else {
        escape(s)
    }
}

/// Escaped identifier with a line-break opportunity after each underscore, so long
/// snake_case feature names wrap in narrow table headers instead of widening them.
pub(crate) fn breakable(s: &str) -> String {
    escape(s).replace('_', "_<wbr>")
}

const NA: &str = "n/a";

/// Inserts thousands separators into a string of ASCII digits (optionally signed).
fn group_digits(digits: &str) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", digits),
    };
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    out.push_str(sign);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count: "12,345".
pub(crate) fn int(n: u64) -> String {
    group_digits(&n.to_string())
}

/// A number with `decimals` decimals and thousands separators; "n/a" when not finite.
pub(crate) fn num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return NA.to_string();
    }
    let s = format!("{:.*}", decimals, v);
    let s = if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string() // no "-0.00"
    } else {
        s
    };
    match s.split_once('.') {
        Some((whole, frac)) => format!("{}.{}", group_digits(whole), frac),
        None => group_digits(&s),
    }
}

/// A fraction as a percentage: 0.234 → "23.4%".
pub(crate) fn pct(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{}%", num(v * 100.0, decimals))
    } else {
        NA.to_string()
    }
}

/// `count / total` as a safe fraction (0 when the total is 0).
pub(crate) fn ratio(count: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    }
}

/// How a feature's value reads best, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Durations in days: whole numbers.
    Days,
    /// Spend: two decimals.
    Money,
    /// Signed ratios (the activity trend): two decimals with a sign.
    Signed,
    /// Counts and minutes: one decimal when small, whole numbers when large.
    Count,
}

pub(crate) fn unit_of(feature: &str) -> Unit {
    let f = feature.to_ascii_lowercase();
    if f.contains("days") || f.ends_with("_day") || f == "recency" || f == "tenure" {
        Unit::Days
    } else if f.contains("monetary")
        || f.contains("spend")
        || f.contains("amount")
        || f.contains("value")
    {
        Unit::Money
    } else if f.contains("trend") {
        Unit::Signed
    } else {
        Unit::Count
    }
}

/// A feature value in original units, formatted for its unit.
pub(crate) fn feature_value(feature: &str, v: f64) -> String {
    if !v.is_finite() {
        return NA.to_string();
    }
    match unit_of(feature) {
        Unit::Days => num(v, 0),
        Unit::Money => num(v, 2),
        Unit::Signed => {
            let s = num(v, 2);
            if v > 0.0 && s != "0.00" {
                format!("+{s}")
            } else {
                s
            }
        }
        Unit::Count => {
            if v.abs() >= 100.0 {
                num(v, 0)
            } else {
                num(v, 1)
            }
        }
    }
}

/// Where `v` sits between `lo` and `hi`, in [0, 1]; `None` when that is not defined
/// (non-finite inputs, or a column whose values are all equal).
pub(crate) fn position(v: f64, lo: f64, hi: f64) -> Option<f64> {
    if !(v.is_finite() && lo.is_finite() && hi.is_finite())
        || hi - lo <= f64::EPSILON * hi.abs().max(1.0)
    {
        return None;
    }
    Some(((v - lo) / (hi - lo)).clamp(0.0, 1.0))
}

/// Background colour for a heat-map cell: white mixed toward `rgb` by `t` in [0, 1], capped so
/// dark text stays readable on the darkest cell.
pub(crate) fn heat(t: f64, rgb: (u8, u8, u8)) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } * 0.72;
    let mix = |c: u8| -> u8 {
        (255.0 + (f64::from(c) - 255.0) * t)
            .round()
            .clamp(0.0, 255.0) as u8
    };
    format!("#{:02x}{:02x}{:02x}", mix(rgb.0), mix(rgb.1), mix(rgb.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>"a"&'b'</script>"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(escape("核心铁粉"), "核心铁粉");
    }

    #[test]
    fn numbers_read_like_a_person_wrote_them() {
        assert_eq!(int(0), "0");
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(num(-1234.5, 1), "-1,234.5");
        assert_eq!(num(-0.0001, 2), "0.00");
        assert_eq!(num(f64::NAN, 2), "n/a");
        assert_eq!(pct(0.234, 1), "23.4%");
        assert_eq!(pct(f64::INFINITY, 1), "n/a");
        assert_eq!(ratio(1, 0), 0.0);
    }

    #[test]
    fn feature_values_use_units_from_the_name() {
        assert_eq!(feature_value("recency_days", 12.6), "13");
        assert_eq!(feature_value("monetary_total", 1234.5), "1,234.50");
        assert_eq!(feature_value("comments", 3.25), "3.2");
        assert_eq!(feature_value("watch_minutes", 1234.5), "1,234");
        assert_eq!(feature_value("trend", 0.5), "+0.50");
        assert_eq!(feature_value("trend", -0.5), "-0.50");
        assert_eq!(feature_value("likes", f64::NAN), "n/a");
    }

    #[test]
    fn position_is_undefined_for_flat_or_broken_columns() {
        assert_eq!(position(5.0, 5.0, 5.0), None);
        assert_eq!(position(f64::NAN, 0.0, 1.0), None);
        assert_eq!(position(0.5, 0.0, 1.0), Some(0.5));
        assert_eq!(heat(0.0, (0, 0, 0)), "#ffffff");
    }
}

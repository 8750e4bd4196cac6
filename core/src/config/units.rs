//! Sizes and durations as people write them: `64MiB`, `1.5 GB`, `10m`, `250ms`.
//!
//! A size key takes a whole number in the unit its name says (`*_bytes`: bytes, `*_mb`: MiB), as it always has, or a
//! string: a number with a unit (`B`, `kB`, `MB`, `GB`, `TB` are powers of 1000; `KiB`, `MiB`, `GiB`, `TiB`, and
//! Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`, powers of 1024; any case), or without one in the key's unit (what a
//! `${env:...}` substitution gives). A duration key takes humantime's notation (`90s`, `10m`, `1h30m`, `250ms`);
//! a bare number is refused with the unit it lacks, since seconds and milliseconds are both plausible readings.
//! Values are serialised back as plain numbers and humantime strings, which parse to the same values.

use std::fmt;
use std::time::Duration;

use humantime_serde::re::humantime;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// The units a size may be written in, lower case, with their factor in bytes.
const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("ki", 1 << 10),
    ("mi", 1 << 20),
    ("gi", 1 << 30),
    ("ti", 1 << 40),
];

/// The most fractional digits a size may have (`1.123456789GiB`): more says nothing about a byte count.
const MAX_FRACTION_DIGITS: usize = 12;

const SIZE_HINT: &str = "write a whole number or a size with a unit: 64MiB, 1.5GiB, 512KiB, 100MB";

/// Parses a size: a decimal number and an optional unit. Without a unit the number is taken in `base` bytes (the
/// key's own unit). The result is in bytes, rounded down; past `u64::MAX` bytes it is an error.
pub fn parse_size(text: &str, base: u64) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim().to_ascii_lowercase();
    let factor = if unit.is_empty() {
        base
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, factor)| *factor)
            .ok_or_else(|| format!("{text:?}: unknown size unit {unit:?}; {SIZE_HINT}"))?
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let well_formed = !whole.is_empty()
        && whole.len() <= 20
        && fraction.len() <= MAX_FRACTION_DIGITS
        && (fraction.chars().all(|c| c.is_ascii_digit()))
        && !(number.contains('.') && fraction.is_empty());
    if !well_formed {
        return Err(format!("{text:?} is not a size; {SIZE_HINT}"));
    }
    let too_large = || format!("{text:?} is too large a size");
    let whole: u128 = whole.parse().map_err(|_| format!("{text:?} is not a size; {SIZE_HINT}"))?;
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| too_large())? };
    // Below 10^20 times a factor of at most 2^40, plus less than that again: far inside u128.
    let bytes = whole * u128::from(factor) + fraction * u128::from(factor) / scale;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Deserialises a size into the key's unit: whole numbers are taken as they are, strings through [`parse_size`] and
/// rounded down to the unit. A size that is not zero but rounds down to zero is refused rather than read as "off".
struct SizeVisitor {
    /// Bytes per unit of the key.
    base: u64,
    /// The key's unit, for messages.
    unit: &'static str,
}

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a size: a whole number of {} or a string with a unit such as \"64MiB\"", self.unit)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| E::custom(format!("{n} is not a size: sizes are not negative")))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        Ok(n)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
        Err(E::custom(format!("{n} is not a whole number of {}; {SIZE_HINT}", self.unit)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
        let bytes = parse_size(text, self.base).map_err(E::custom)?;
        if bytes > 0 && bytes < self.base {
            return Err(E::custom(format!("{text:?} is less than 1 {}, the unit of this key", self.unit)));
        }
        Ok(bytes / self.base)
    }
}

/// A size in the key's unit as the key's integer type, refusing what does not fit it.
fn narrow<T: TryFrom<u64>, E: de::Error>(n: u64, unit: &str) -> Result<T, E> {
    T::try_from(n).map_err(|_| E::custom(format!("{n} {unit} is too large for this machine")))
}

/// `#[serde(with = "units::bytes")]`: a size in bytes (plain numbers are bytes).
pub mod bytes {
    use super::*;

    /// Reads a number of bytes or a size with a unit.
    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        narrow(deserializer.deserialize_any(SizeVisitor { base: 1, unit: "byte" })?, "bytes")
    }

    /// Writes the number of bytes.
    pub fn serialize<S: Serializer, T: serde::Serialize>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }
}

/// `#[serde(with = "units::mib")]`: a size kept in whole MiB (the `*_mb` keys; plain numbers are MiB).
pub mod mib {
    use super::*;

    /// Reads a number of MiB or a size with a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        narrow(deserializer.deserialize_any(SizeVisitor { base: 1 << 20, unit: "MiB" })?, "MiB")
    }

    /// Writes the number of MiB.
    pub fn serialize<S: Serializer>(value: &usize, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*value as u64)
    }
}

/// `#[serde(with = "units::duration")]`: a duration in humantime's notation.
pub mod duration {
    use super::*;

    pub(super) struct DurationVisitor;

    impl<'de> Visitor<'de> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration with a unit, such as \"90s\", \"10m\" or \"1h30m\"")
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            Err(E::custom(format!("{n} has no unit: write it as a string with one, such as \"{n}s\" or \"{n}ms\"")))
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            Err(E::custom(format!("{n} has no unit: write it as a string with one, such as \"{n}s\" or \"{n}ms\"")))
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
            Err(E::custom(format!("{n} has no unit: write it as a string with one, such as \"{n}s\"")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text.trim()).map_err(|e| {
                E::custom(format!(
                    "{text:?} is not a duration ({e}); write e.g. \"90s\", \"10m\", \"1h30m\", \"250ms\""
                ))
            })
        }
    }

    /// Reads a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    /// Writes a duration as humantime does (`1m 30s`).
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }
}

/// `#[serde(with = "units::age")]`: a maximum age, as a duration (`"30d"`, `"12h"`), or `"forever"` (`None`, the
/// default: nothing expires).
pub mod age {
    use super::*;

    /// Reads an age or `"forever"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        struct AgeVisitor;
        impl<'de> Visitor<'de> for AgeVisitor {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30d\" or \"12h\", or \"forever\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                duration::DurationVisitor.visit_i64(n).map(Some)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                duration::DurationVisitor.visit_u64(n).map(Some)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                duration::DurationVisitor.visit_f64(n).map(Some)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text.trim().eq_ignore_ascii_case("forever") {
                    return Ok(None);
                }
                duration::DurationVisitor.visit_str(text).map(Some)
            }
        }
        deserializer.deserialize_any(AgeVisitor)
    }

    /// Writes an age as humantime does, or `"forever"`.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.collect_str(&humantime::format_duration(*d)),
            None => serializer.serialize_str("forever"),
        }
    }
}

/// `#[serde(with = "units::optional_bytes")]`: a size in bytes that may be left unset (a cap that is off).
pub mod optional_bytes {
    use super::*;

    /// Reads a number of bytes or a size with a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        deserializer.deserialize_any(SizeVisitor { base: 1, unit: "byte" }).map(Some)
    }

    /// Writes the number of bytes (unset values are skipped by the field's `skip_serializing_if`).
    pub fn serialize<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => serializer.serialize_u64(*bytes),
            None => serializer.serialize_none(),
        }
    }
}

/// `#[serde(with = "units::project_retention")]`: a project's retention, an age or `"forever"` as [`age`] reads
/// them; a project that writes none keeps its table's ([`crate::config::ProjectRetention::Table`], the field's
/// default).
pub mod project_retention {
    use super::*;
    use crate::config::ProjectRetention;

    /// Reads an age or `"forever"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ProjectRetention, D::Error> {
        Ok(match age::deserialize(deserializer)? {
            Some(max_age) => ProjectRetention::MaxAge(max_age),
            None => ProjectRetention::Forever,
        })
    }

    /// Writes an age or `"forever"` (the table's retention is skipped by the field's `skip_serializing_if`).
    pub fn serialize<S: Serializer>(value: &ProjectRetention, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            ProjectRetention::MaxAge(d) => serializer.collect_str(&humantime::format_duration(*d)),
            ProjectRetention::Forever => serializer.serialize_str("forever"),
            ProjectRetention::Table => serializer.serialize_none(),
        }
    }
}

/// `#[serde(with = "units::millis")]`: a duration kept as fractional milliseconds (`live.slo_p99_ms`), written as a
/// number of milliseconds, as it always was, or as a duration string (`"250ms"`, `"2s"`).
pub mod millis {
    use super::*;

    struct MillisVisitor;

    impl<'de> Visitor<'de> for MillisVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("milliseconds, as a number or a duration such as \"250ms\" or \"2s\"")
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<f64, E> {
            Ok(n as f64)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<f64, E> {
            Ok(n as f64)
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<f64, E> {
            Ok(n)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<f64, E> {
            if let Ok(ms) = text.trim().parse::<f64>() {
                return Ok(ms);
            }
            let d = super::duration::DurationVisitor.visit_str::<E>(text)?;
            Ok(d.as_secs_f64() * 1000.0)
        }
    }

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(MillisVisitor)
    }

    /// Writes the number of milliseconds.
    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(*value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        let mib = 1u64 << 20;
        for (text, base, want) in [
            ("64MiB", 1, 64 * mib),
            ("64 MiB", 1, 64 * mib),
            (" 64mib ", 1, 64 * mib),
            ("64Mi", 1, 64 * mib),
            ("1.5GiB", 1, 1536 * mib),
            ("0.125GiB", 1, 128 * mib),
            ("100MB", 1, 100_000_000),
            ("1kB", 1, 1000),
            ("512KiB", 1, 512 * 1024),
            ("1TiB", 1, 1 << 40),
            ("7B", 1, 7),
            ("1024", 1, 1024),
            ("320", mib, 320 * mib),
            ("0", mib, 0),
            ("1.0000000001GB", 1, 1_000_000_000),
        ] {
            assert_eq!(parse_size(text, base), Ok(want), "{text}");
        }
        for bad in
            ["", "MiB", "64 MeB", "64m", "1.5.1GiB", "1.GiB", "-1MiB", "1,5GiB", "1e9", "99999999999999999999999"]
        {
            let err = parse_size(bad, 1).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{bad}: the value is named: {err}");
        }
        assert!(parse_size("17179869184TiB", 1).unwrap_err().contains("too large"));
    }

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Keys {
        #[serde(with = "bytes")]
        max_bytes: usize,
        #[serde(with = "mib")]
        limit_mb: usize,
        #[serde(with = "duration")]
        timeout: Duration,
        #[serde(with = "millis")]
        slo_ms: f64,
    }

    fn keys(toml: &str) -> Result<Keys, String> {
        toml::from_str(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_take_plain_numbers_in_their_unit_or_strings_with_one_and_round_trip() {
        let plain = keys("max_bytes = 1024\nlimit_mb = 320\ntimeout = \"10m\"\nslo_ms = 5000.0\n").unwrap();
        let written =
            keys("max_bytes = \"1KiB\"\nlimit_mb = \"320MiB\"\ntimeout = \"600s\"\nslo_ms = \"5s\"\n").unwrap();
        assert_eq!(plain, written);
        assert_eq!(plain, Keys { max_bytes: 1024, limit_mb: 320, timeout: Duration::from_secs(600), slo_ms: 5000.0 });
        assert_eq!(keys(&toml::to_string(&plain).unwrap()).unwrap(), plain, "what is written reads back");
        // Sizes with a unit are rounded down to the key's whole MiB; a bare string number is in the key's unit.
        let k = keys("max_bytes = \"2048\"\nlimit_mb = \"1GB\"\ntimeout = \"1h 30m\"\nslo_ms = \"250\"\n").unwrap();
        assert_eq!((k.max_bytes, k.limit_mb, k.timeout, k.slo_ms), (2048, 953, Duration::from_secs(5400), 250.0));

        for (toml, says) in [
            ("max_bytes = -1\nlimit_mb = 1\ntimeout = \"1s\"\nslo_ms = 1\n", "not negative"),
            ("max_bytes = 1.5\nlimit_mb = 1\ntimeout = \"1s\"\nslo_ms = 1\n", "not a whole number"),
            ("max_bytes = \"64 zB\"\nlimit_mb = 1\ntimeout = \"1s\"\nslo_ms = 1\n", "unknown size unit"),
            ("max_bytes = 1\nlimit_mb = \"512KiB\"\ntimeout = \"1s\"\nslo_ms = 1\n", "less than 1 MiB"),
            ("max_bytes = 1\nlimit_mb = \"17592186044416TiB\"\ntimeout = \"1s\"\nslo_ms = 1\n", "too large"),
            ("max_bytes = 1\nlimit_mb = 1\ntimeout = 30\nslo_ms = 1\n", "\"30s\""),
            ("max_bytes = 1\nlimit_mb = 1\ntimeout = \"30 parsecs\"\nslo_ms = 1\n", "not a duration"),
            ("max_bytes = 1\nlimit_mb = 1\ntimeout = \"1s\"\nslo_ms = \"soon\"\n", "not a duration"),
        ] {
            let err = keys(toml).expect_err(toml);
            assert!(err.contains(says), "{toml}: {err}");
        }
    }
}

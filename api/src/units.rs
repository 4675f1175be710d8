//! Durations (`300ms`, `30s`, `2m`, `1h`, `1m30s`), percentages (`5%`,
//! `0.5%`) and rates (`1mbit`, `500kbit`).
//!
//! Both are written as strings in every Faultline file and in the CRDs, so
//! they serialize as strings and carry a `pattern` in their JSON schema.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::yaml::quote;

/// The longest duration any Faultline field accepts.
pub const MAX_DURATION_MS: u64 = 24 * 3600 * 1000;

/// Exactly the strings `Duration::from_str` accepts: units largest first,
/// each once; a unit after the first below its carry (`1h59m`, not `1h90m`),
/// so the first unit alone decides the 24 h bound (`24h` or `1440m` only with
/// zero after them). The apiserver applies it, so it must not be looser.
pub const DURATION_PATTERN: &str = concat!(
    "^(",
    // Led by hours.
    "0*(1?[0-9]|2[0-3])h(0*[0-5]?[0-9]m)?(0*[0-5]?[0-9]s)?(0*[0-9]{1,3}ms)?",
    "|0*24h(0+m)?(0+s)?(0+ms)?",
    // Led by minutes.
    "|0*([0-9]{1,3}|1[0-3][0-9]{2}|14[0-3][0-9])m(0*[0-5]?[0-9]s)?(0*[0-9]{1,3}ms)?",
    "|0*1440m(0+s)?(0+ms)?",
    // Led by seconds.
    "|0*([0-9]{1,4}|[0-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2})s(0*[0-9]{1,3}ms)?",
    "|0*86400s(0+ms)?",
    // Milliseconds alone.
    "|0*([0-9]{1,7}|[0-7][0-9]{7}|8[0-5][0-9]{6}|86[0-3][0-9]{5}|86400000)ms",
    ")$"
);
pub const PERCENT_PATTERN: &str = r"^(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)%$";
/// Exactly the strings `Rate::from_str` accepts: a whole number from 1 to
/// 999 999 999 and a unit, decimal as tc's (1kbit = 1000 bit/s).
pub const RATE_PATTERN: &str = r"^[1-9][0-9]{0,8}(bit|kbit|mbit|gbit)$";

/// Sizes as [`Size`] parses them: a whole number of KiB, MiB or GiB, at
/// most 64Gi (checked by the parser; the pattern bounds the digits).
pub const SIZE_PATTERN: &str = r"^[1-9][0-9]{0,7}(Ki|Mi|Gi)$";

/// CPU as [`Cpu`] parses it: millicores (`500m`) or whole cores (`2`);
/// the parser bounds it to 10m..64.
pub const CPU_PATTERN: &str = r"^([1-9][0-9]{0,4}m|[1-9][0-9]?)$";

/// A non-negative span of time of at most 24 h, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(u64);

impl Duration {
    pub const ZERO: Duration = Duration(0);

    /// None when above the 24 h maximum.
    pub const fn from_millis(ms: u64) -> Option<Duration> {
        if ms > MAX_DURATION_MS {
            None
        } else {
            Some(Duration(ms))
        }
    }

    pub const fn from_secs(s: u64) -> Option<Duration> {
        Duration::from_millis(s.saturating_mul(1000))
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// Sum of two durations; None when it would pass the 24 h maximum.
    pub fn checked_add(self, other: Duration) -> Option<Duration> {
        Duration::from_millis(self.0.checked_add(other.0)?)
    }
}

/// Why a duration or percentage could not be read; the text is the whole message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            UnitError(format!(
                "{} is not a duration (use 300ms, 30s, 2m, 1h)",
                quote(s)
            ))
        };
        // No trimming: the CRD's pattern refuses surrounding spaces, so must this.
        let text = s;
        if text.starts_with('-') && text.len() > 1 {
            return Err(UnitError(format!(
                "{} is negative; durations cannot be",
                quote(s)
            )));
        }
        if text.is_empty() {
            return Err(bad());
        }
        let mut rest = text;
        let mut total: u64 = 0;
        // Units must come largest first and at most once each (1h30m, not 30m1h).
        let mut last_rank = usize::MAX;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let (num, tail) = rest.split_at(digits);
            let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, tail) = tail.split_at(unit_len);
            let (rank, factor) = match unit {
                "h" => (3, 3_600_000),
                "m" => (2, 60_000),
                "s" => (1, 1_000),
                "ms" => (0, 1),
                _ => return Err(bad()),
            };
            if rank >= last_rank {
                return Err(bad());
            }
            let n: u64 = num.parse().unwrap_or(u64::MAX);
            // After a larger unit, a smaller one stays below its carry, so that
            // DURATION_PATTERN can bound the total by the first unit alone.
            let carry = match rank {
                2 | 1 => 60,
                _ => 1000,
            };
            if last_rank != usize::MAX && n >= carry {
                return Err(UnitError(format!(
                    "{} is not a duration: after a larger unit, {unit} must be below {carry} \
                     (write 2m30s, not 1m90s)",
                    quote(s)
                )));
            }
            last_rank = rank;
            let too_large = || {
                UnitError(format!(
                    "{} is longer than 24h, the most Faultline accepts",
                    quote(s)
                ))
            };
            total = n
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(too_large)?;
            rest = tail;
        }
        Duration::from_millis(total).ok_or_else(|| {
            UnitError(format!(
                "{} is longer than 24h, the most Faultline accepts",
                quote(s)
            ))
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut ms = self.0;
        for (unit, factor) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= factor {
                write!(f, "{}{unit}", ms / factor)?;
                ms %= factor;
            }
        }
        Ok(())
    }
}

/// A percentage between 0 and 100 inclusive, written `5%`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

impl Percent {
    pub fn new(points: f64) -> Option<Percent> {
        (0.0..=100.0).contains(&points).then_some(Percent(points))
    }

    /// The value in percentage points (5% → 5.0).
    pub fn points(self) -> f64 {
        self.0
    }

    /// The value as a fraction (5% → 0.05).
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl FromStr for Percent {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || {
            UnitError(format!(
                "{} is not a percentage (write it like 5% or 0.5%)",
                quote(s)
            ))
        };
        // No trimming: the parser accepts exactly what PERCENT_PATTERN does.
        let number = s.strip_suffix('%').ok_or_else(malformed)?;
        if number.starts_with('-') {
            return Err(UnitError(format!(
                "{} is negative; percentages must be 0% to 100%",
                quote(s)
            )));
        }
        let (int, frac) = match number.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (number, None),
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return Err(malformed());
        }
        let above = || UnitError(format!("{} is above 100%", quote(s)));
        // As the pattern: one or two digits, or 100 with an all-zero fraction.
        if int.len() > 2 {
            if int.starts_with('0') {
                return Err(malformed());
            }
            if int != "100" || frac.is_some_and(|f| f.bytes().any(|b| b != b'0')) {
                return Err(above());
            }
        }
        let value: f64 = number.parse().map_err(|_| malformed())?;
        Percent::new(value).ok_or_else(above)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// A bandwidth in bits per second, written `1mbit`, `500kbit`, `2gbit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u64);

impl Rate {
    pub fn bits_per_second(self) -> u64 {
        self.0
    }

    /// In bytes per second, rounded up (a rate is never 0: that would be
    /// no limit at all to the kernel).
    pub fn bytes_per_second(self) -> u64 {
        self.0.div_ceil(8)
    }
}

const RATE_UNITS: [(&str, u64); 4] = [
    ("gbit", 1_000_000_000),
    ("mbit", 1_000_000),
    ("kbit", 1_000),
    ("bit", 1),
];

impl FromStr for Rate {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || {
            UnitError(format!(
                "{} is not a rate (write it like 1mbit, 500kbit or 2gbit)",
                quote(s)
            ))
        };
        let (number, scale) = RATE_UNITS
            .iter()
            .find_map(|(unit, scale)| s.strip_suffix(unit).map(|n| (n, *scale)))
            .ok_or_else(malformed)?;
        if number.starts_with('-') || number.bytes().all(|b| b == b'0') && !number.is_empty() {
            return Err(UnitError(format!(
                "{} is not above 0; a rate limits traffic to more than nothing",
                quote(s)
            )));
        }
        // As the pattern: 1 to 9 digits, no leading zero.
        if number.is_empty()
            || number.len() > 9
            || number.starts_with('0')
            || !number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let n: u64 = number.parse().map_err(|_| malformed())?;
        Ok(Rate(n * scale))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The largest unit that writes it whole (as the parser reads it back).
        let (unit, scale) = RATE_UNITS
            .iter()
            .find(|(_, scale)| self.0.is_multiple_of(*scale) && self.0 / scale < 1_000_000_000)
            .copied()
            .unwrap_or(("bit", 1));
        write!(f, "{}{unit}", self.0 / scale)
    }
}

/// An amount of memory in bytes, written `64Mi`, `512Ki`, `2Gi` (binary
/// units, as Kubernetes writes memory limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

/// The largest size a stress fault may hold: far beyond any pod's limit,
/// small enough that arithmetic on it never overflows.
const MAX_SIZE: u64 = 64 << 30;

const SIZE_UNITS: [(&str, u64); 3] = [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || {
            UnitError(format!(
                "{} is not a size (write it like 64Mi, 512Ki or 2Gi)",
                quote(s)
            ))
        };
        let (number, scale) = SIZE_UNITS
            .iter()
            .find_map(|(unit, scale)| s.strip_suffix(unit).map(|n| (n, *scale)))
            .ok_or_else(malformed)?;
        if number.starts_with('-') || !number.is_empty() && number.bytes().all(|b| b == b'0') {
            return Err(UnitError(format!("{} is not above 0", quote(s))));
        }
        // As the pattern: 1 to 8 digits, no leading zero.
        if number.is_empty()
            || number.len() > 8
            || number.starts_with('0')
            || !number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let n: u64 = number.parse().map_err(|_| malformed())?;
        match n.checked_mul(scale) {
            Some(b) if b <= MAX_SIZE => Ok(Size(b)),
            _ => Err(UnitError(format!("{} is above 64Gi", quote(s)))),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = SIZE_UNITS
            .iter()
            .find(|(_, scale)| self.0.is_multiple_of(*scale))
            .copied()
            .unwrap_or(("Ki", 1 << 10));
        write!(f, "{}{unit}", self.0 / scale)
    }
}

/// A share of CPU time in thousandths of a core, written `500m` or `2`
/// (as Kubernetes writes CPU limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(u32);

/// The least a limit may be: cgroup v2 refuses a quota under 1 ms per
/// 100 ms period.
const MIN_MILLICORES: u32 = 10;
const MAX_MILLICORES: u32 = 64_000;

impl Cpu {
    pub fn millicores(self) -> u32 {
        self.0
    }
}

impl FromStr for Cpu {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || {
            UnitError(format!(
                "{} is not an amount of CPU (write it like 500m for half a core, or 2 for two cores)",
                quote(s)
            ))
        };
        let (number, scale) = match s.strip_suffix('m') {
            Some(n) => (n, 1),
            None => (s, 1000),
        };
        if number.is_empty()
            || number.len() > 5
            || number.starts_with('0')
            || !number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let n: u32 = number.parse().map_err(|_| malformed())?;
        match n.checked_mul(scale) {
            Some(m) if m < MIN_MILLICORES => Err(UnitError(format!(
                "{} is below 10m, the least CPU a cgroup can be limited to",
                quote(s)
            ))),
            Some(m) if m <= MAX_MILLICORES => Ok(Cpu(m)),
            _ => Err(UnitError(format!("{} is above 64 cores", quote(s)))),
        }
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

macro_rules! string_serde {
    ($ty:ty, $name:literal, $pattern:expr, $desc:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<str>::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $desc,
                })
            }
        }
    };
}

string_serde!(
    Duration,
    "Duration",
    DURATION_PATTERN,
    "A duration such as 300ms, 30s, 2m, 1h or 1m30s (at most 24h)."
);
string_serde!(
    Rate,
    "Rate",
    RATE_PATTERN,
    "A bandwidth in bits per second, such as 1mbit, 500kbit or 2gbit (1kbit = 1000 bit/s)."
);
string_serde!(
    Size,
    "Size",
    SIZE_PATTERN,
    "An amount of memory such as 64Mi, 512Ki or 2Gi (1Mi = 1048576 bytes), at most 64Gi."
);
string_serde!(
    Cpu,
    "Cpu",
    CPU_PATTERN,
    "CPU in thousandths of a core such as 500m, or whole cores such as 2; from 10m to 64."
);
string_serde!(
    Percent,
    "Percent",
    PERCENT_PATTERN,
    "A percentage from 0% to 100%, such as 5% or 0.5%."
);

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<u64, String> {
        s.parse::<Duration>()
            .map(Duration::as_millis)
            .map_err(|e| e.0)
    }

    #[test]
    fn durations() {
        assert_eq!(d("300ms"), Ok(300));
        assert_eq!(d("30s"), Ok(30_000));
        assert_eq!(d("2m"), Ok(120_000));
        assert_eq!(d("1h"), Ok(3_600_000));
        assert_eq!(d("1m30s"), Ok(90_000));
        assert_eq!(d("0s"), Ok(0));
        assert_eq!(d("24h"), Ok(MAX_DURATION_MS));
        assert!(
            d("5 minutes")
                .expect_err("must be refused")
                .contains("is not a duration (use 300ms, 30s, 2m, 1h)")
        );
        assert!(d("-5s").expect_err("must be refused").contains("negative"));
        assert!(
            d("25h")
                .expect_err("must be refused")
                .contains("longer than 24h")
        );
        assert!(
            d("99999999999999999999999h")
                .expect_err("must be refused")
                .contains("longer than 24h")
        );
        assert!(d("30s1m").is_err());
        assert!(d("1m1m").is_err());
        assert!(d("90s").is_ok() && d("1500ms").is_ok() && d("1440m").is_ok());
        assert!(
            d("1m90s")
                .expect_err("carry")
                .contains("s must be below 60")
        );
        assert!(d("1s1000ms").expect_err("carry").contains("below 1000"));
        assert!(d("24h1ms").expect_err("over").contains("longer than 24h"));
        assert!(d("30").is_err());
        assert!(d("s").is_err());
        assert!(d("1.5s").is_err());
        assert!(d("").is_err());
        assert!(d(" 1s").is_err());
        assert!(d("1s ").is_err());
    }

    #[test]
    fn durations_round_trip_canonically() {
        for (text, canon) in [
            ("90s", "1m30s"),
            ("1h0m", "1h"),
            ("1500ms", "1s500ms"),
            ("0ms", "0s"),
        ] {
            let parsed: Duration = text.parse().expect(text);
            assert_eq!(parsed.to_string(), canon);
            assert_eq!(canon.parse::<Duration>().ok(), Some(parsed));
        }
    }

    #[test]
    fn percentages() {
        let p = |s: &str| s.parse::<Percent>().map(Percent::points).map_err(|e| e.0);
        assert_eq!(p("5%"), Ok(5.0));
        assert_eq!(p("0.5%"), Ok(0.5));
        assert_eq!(p("100%"), Ok(100.0));
        assert_eq!(p("0%"), Ok(0.0));
        assert!(
            p("101%")
                .expect_err("must be refused")
                .contains("above 100%")
        );
        assert!(p("-1%").expect_err("must be refused").contains("negative"));
        assert!(
            p("5")
                .expect_err("must be refused")
                .contains("write it like 5%")
        );
        assert!(p("five%").is_err());
        assert!(p(".5%").is_err());
        assert!(p("1e2%").is_err());
        assert!(
            p("005%")
                .expect_err("leading zeros")
                .contains("not a percentage")
        );
        assert!(p("100.001%").expect_err("over").contains("above 100%"));
        assert!(p(" 5%").is_err());
    }

    #[test]
    fn sizes() {
        let z = |s: &str| s.parse::<Size>().map(Size::bytes).map_err(|e| e.0);
        assert_eq!(z("64Mi"), Ok(64 << 20));
        assert_eq!(z("512Ki"), Ok(512 << 10));
        assert_eq!(z("2Gi"), Ok(2 << 30));
        assert_eq!(z("64Gi"), Ok(64 << 30));
        assert!(z("65Gi").expect_err("over").contains("above 64Gi"));
        assert!(z("99999999Gi").expect_err("over").contains("above 64Gi"));
        assert!(z("0Mi").expect_err("zero").contains("not above 0"));
        assert!(z("-1Mi").expect_err("negative").contains("not above 0"));
        for bad in ["64", "64M", "64MB", "1.5Gi", "01Mi", "64 Mi", "123456789Ki"] {
            assert!(z(bad).is_err(), "{bad}");
        }
        let pattern = regex::Regex::new(SIZE_PATTERN).expect("pattern");
        for text in ["64Mi", "1536Ki", "2Gi", "67108864Ki"] {
            assert!(pattern.is_match(text), "{text}");
            let size: Size = text.parse().expect(text);
            assert!(pattern.is_match(&size.to_string()), "{size}");
        }
        assert_eq!(
            "1024Mi".parse::<Size>().map(|s| s.to_string()).ok(),
            Some("1Gi".to_owned())
        );
        for bad in ["0Mi", "1.5Gi", "64", "123456789Ki"] {
            assert!(!pattern.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn cpus() {
        let c = |s: &str| s.parse::<Cpu>().map(Cpu::millicores).map_err(|e| e.0);
        assert_eq!(c("500m"), Ok(500));
        assert_eq!(c("2"), Ok(2000));
        assert_eq!(c("10m"), Ok(10));
        assert_eq!(c("64"), Ok(64_000));
        assert!(c("9m").expect_err("under").contains("below 10m"));
        assert!(c("65").expect_err("over").contains("above 64 cores"));
        assert!(c("99999").expect_err("over").contains("above 64 cores"));
        for bad in [
            "", "m", "0", "0m", "0.5", "-1", "500 m", "1.5", "05m", "500M", "123456m",
        ] {
            assert!(c(bad).is_err(), "{bad}");
        }
        let pattern = regex::Regex::new(CPU_PATTERN).expect("pattern");
        for text in ["500m", "2", "1500m", "64"] {
            assert!(pattern.is_match(text), "{text}");
            let cpu: Cpu = text.parse().expect(text);
            assert!(pattern.is_match(&cpu.to_string()), "{cpu}");
        }
        assert_eq!(
            "2000m".parse::<Cpu>().map(|c| c.to_string()).ok(),
            Some("2".to_owned())
        );
    }

    #[test]
    fn rates() {
        let r = |s: &str| {
            s.parse::<Rate>()
                .map(Rate::bits_per_second)
                .map_err(|e| e.0)
        };
        assert_eq!(r("1mbit"), Ok(1_000_000));
        assert_eq!(r("500kbit"), Ok(500_000));
        assert_eq!(r("2gbit"), Ok(2_000_000_000));
        assert_eq!(r("12bit"), Ok(12));
        assert!(r("0mbit").expect_err("zero").contains("not above 0"));
        assert!(r("-1mbit").expect_err("negative").contains("not above 0"));
        for bad in [
            "1",
            "1 mbit",
            "1.5mbit",
            "01mbit",
            "1Mbit",
            "1mbps",
            "1000000000bit",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
        let pattern = regex::Regex::new(RATE_PATTERN).expect("pattern");
        for text in ["1mbit", "1500kbit", "7bit", "999999999gbit"] {
            assert!(pattern.is_match(text), "{text}");
            let rate: Rate = text.parse().expect(text);
            assert_eq!(rate.to_string(), text, "written back as read");
        }
        assert_eq!(
            "1000kbit"
                .parse::<Rate>()
                .map(|r| r.to_string())
                .ok()
                .as_deref(),
            Some("1mbit")
        );
        for bad in ["0bit", "1.5mbit", "1 mbit", "1000000000bit"] {
            assert!(!pattern.is_match(bad), "{bad}");
        }
        assert_eq!(
            "12bit".parse::<Rate>().ok().map(Rate::bytes_per_second),
            Some(2)
        );
    }

    #[test]
    fn schema_patterns_agree_with_parsers() {
        // The apiserver checks these patterns at apply time: they must accept
        // every value the parsers accept and refuse the malformed ones.
        let dur = regex::Regex::new(DURATION_PATTERN).expect("pattern");
        for ok in [
            "300ms",
            "1m30s",
            "24h",
            "0s",
            "1h2m3s4ms",
            "90s",
            "1440m",
            "86400s",
            "86400000ms",
            "24h0m0s0ms",
            "0024h",
            "23h59m59s999ms",
            "1439m59s999ms",
            "0h59m",
        ] {
            assert!(ok.parse::<Duration>().is_ok() && dur.is_match(ok), "{ok}");
        }
        for bad in [
            "5 minutes",
            "-5s",
            "30",
            "1.5s",
            "",
            " 1s",
            "1s ",
            "1s\n",
            "1 s",
            "\u{a0}1s",
            "30s1m",
            "25h",
            "24h1ms",
            "1441m",
            "86401s",
            "86400001ms",
            "1h60m",
            "1m90s",
            "1s1000ms",
            "1h1h",
            "1ms1m",
            "1d",
            "1H",
        ] {
            assert!(
                bad.parse::<Duration>().is_err() && !dur.is_match(bad),
                "{bad}"
            );
        }
        let pct = regex::Regex::new(PERCENT_PATTERN).expect("pattern");
        for ok in [
            "5%",
            "0.5%",
            "100%",
            "100.0%",
            "100.000%",
            "0%",
            "05%",
            "99.99%",
            "99.99999999999999999999%",
        ] {
            assert!(ok.parse::<Percent>().is_ok() && pct.is_match(ok), "{ok}");
        }
        let tiny_over = format!("100.{}1%", "0".repeat(40));
        for bad in [
            "101%",
            "5",
            "-1%",
            "100.5%",
            ".5%",
            "5.%",
            "5 %",
            "005%",
            "0100%",
            "000%",
            tiny_over.as_str(),
            " 5%",
            "5% ",
            "5%%",
            "+5%",
        ] {
            assert!(
                bad.parse::<Percent>().is_err() && !pct.is_match(bad),
                "{bad}"
            );
        }
    }
    #[test]
    fn duration_pattern_and_parser_agree_on_every_combination() {
        // Every ordered pick of units (repeats and wrong orders included) with
        // numbers at the boundaries: the apiserver and the parser must agree.
        let dur = regex::Regex::new(DURATION_PATTERN).expect("pattern");
        let numbers = [
            "0",
            "00",
            "1",
            "01",
            "23",
            "24",
            "024",
            "25",
            "59",
            "60",
            "61",
            "999",
            "1000",
            "1439",
            "1440",
            "1441",
            "86399",
            "86400",
            "86401",
            "86399999",
            "86400000",
            "86400001",
            "99999999999999999999999",
        ];
        let units = ["h", "m", "s", "ms"];
        let mut strings = vec![String::new()];
        for _ in 0..3 {
            let mut longer = Vec::new();
            for prefix in &strings {
                for n in numbers {
                    for u in units {
                        longer.push(format!("{prefix}{n}{u}"));
                    }
                }
            }
            strings.extend(longer.into_iter().filter(|s| s.len() < 40));
            strings.dedup();
        }
        let mut checked = 0;
        for text in &strings {
            let parsed = text.parse::<Duration>();
            assert_eq!(
                parsed.is_ok(),
                dur.is_match(text),
                "{text:?}: parser says {parsed:?}"
            );
            checked += 1;
        }
        assert!(checked > 10_000, "only {checked} strings");
    }
}

//! Column types: declared by name in the pipeline file, or inferred from a sample of
//! the input, and the one parser that turns a field's text into a typed value (CSV
//! fields and JSON values both go through it, so `"2013-01-01 05:00:00"` means the same
//! timestamp in either).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};

/// A column's type, as written in `schema = { col = "int32" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int32,
    Int64,
    Float64,
    String,
    /// Days since the epoch (`2013-01-01`).
    Date32,
    Timestamp(TimeUnit),
}

/// The type names `schema` accepts, for messages and docs.
pub const TYPE_NAMES: &str =
    "string, bool, int32, int64, float64, date32, timestamp[s], timestamp[ms], timestamp[us], timestamp[ns]";

impl ColumnType {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "string" | "utf8" | "str" => Self::String,
            "bool" | "boolean" => Self::Bool,
            "int32" | "int" => Self::Int32,
            "int64" | "bigint" | "long" => Self::Int64,
            "float64" | "double" | "float" => Self::Float64,
            "date32" | "date" => Self::Date32,
            "timestamp[s]" | "timestamp" => Self::Timestamp(TimeUnit::Second),
            "timestamp[ms]" => Self::Timestamp(TimeUnit::Millisecond),
            "timestamp[us]" => Self::Timestamp(TimeUnit::Microsecond),
            "timestamp[ns]" => Self::Timestamp(TimeUnit::Nanosecond),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Float64 => "float64",
            Self::String => "string",
            Self::Date32 => "date32",
            Self::Timestamp(TimeUnit::Second) => "timestamp[s]",
            Self::Timestamp(TimeUnit::Millisecond) => "timestamp[ms]",
            Self::Timestamp(TimeUnit::Microsecond) => "timestamp[us]",
            Self::Timestamp(TimeUnit::Nanosecond) => "timestamp[ns]",
        }
    }

    pub fn arrow(self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::Float64 => DataType::Float64,
            Self::String => DataType::Utf8,
            Self::Date32 => DataType::Date32,
            Self::Timestamp(unit) => DataType::Timestamp(unit, None),
        }
    }

    /// The type of an existing Arrow column (a Parquet input), if weir has one for it.
    pub fn of_arrow(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Boolean => Self::Bool,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => Self::Int32,
            DataType::Int64 | DataType::UInt32 => Self::Int64,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Self::Float64,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Self::String,
            DataType::Date32 => Self::Date32,
            DataType::Timestamp(unit, _) => Self::Timestamp(*unit),
            _ => return None,
        })
    }
}

/// A typed value parsed from a field's text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Dates are days, timestamps are counts of their unit.
    Temporal(i64),
    /// The text itself (string columns).
    Text,
}

/// Parses `text` as `ty`; `None` when it is not one.
pub fn parse(ty: ColumnType, text: &[u8]) -> Option<Value> {
    match ty {
        ColumnType::String => Some(Value::Text),
        ColumnType::Bool => parse_bool(text).map(Value::Bool),
        ColumnType::Int32 => parse_int(text).filter(|v| i32::try_from(*v).is_ok()).map(Value::Int),
        ColumnType::Int64 => parse_int(text).map(Value::Int),
        ColumnType::Float64 => parse_float(text).map(Value::Float),
        ColumnType::Date32 => parse_date(text).map(Value::Temporal),
        ColumnType::Timestamp(unit) => parse_timestamp(text, unit).map(Value::Temporal),
    }
}

pub(super) fn parse_bool(text: &[u8]) -> Option<bool> {
    if text.eq_ignore_ascii_case(b"true") {
        Some(true)
    } else if text.eq_ignore_ascii_case(b"false") {
        Some(false)
    } else {
        None
    }
}

pub(super) fn parse_int(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(d as i64)?;
    }
    Some(if negative { -value } else { value })
}

pub(super) fn parse_float(text: &[u8]) -> Option<f64> {
    lexical_core::parse::<f64>(text).ok()
}

fn digits(text: &[u8]) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0i64, |acc, &b| {
        let d = b.wrapping_sub(b'0');
        (d <= 9).then_some(acc * 10 + d as i64)
    })
}

/// Days since 1970-01-01 of `YYYY-MM-DD`.
pub(super) fn parse_date(text: &[u8]) -> Option<i64> {
    if text.len() != 10 || text[4] != b'-' || text[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&text[..4])?, digits(&text[5..7])?, digits(&text[8..10])?);
    days_from_civil(y, m, d)
}

/// Howard Hinnant's days-from-civil, with the month's length checked.
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.fraction]][Z|±HH:MM]`, or a date alone (midnight), in `unit`.
pub(super) fn parse_timestamp(text: &[u8], unit: TimeUnit) -> Option<i64> {
    let per_second: i64 = match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    if text.len() == 10 {
        return parse_date(text)?.checked_mul(86_400 * per_second);
    }
    if text.len() < 16 || !matches!(text[10], b' ' | b'T') || text[13] != b':' {
        return None;
    }
    let days = parse_date(&text[..10])?;
    let (hour, minute) = (digits(&text[11..13])?, digits(&text[14..16])?);
    let mut rest = &text[16..];
    let mut second = 0;
    let mut fraction = 0i64;
    if let [b':', s1, s2, tail @ ..] = rest {
        second = digits(&[*s1, *s2])?;
        rest = tail;
        if let [b'.', tail @ ..] = rest {
            let n = tail.iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            let kept = &tail[..n.min(9)];
            fraction = digits(kept)? * 10i64.pow(9 - kept.len() as u32);
            rest = &tail[n..];
        }
    }
    let offset = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let minutes = digits(&[*h1, *h2])? * 60 + digits(&[*m1, *m2])?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset;
    seconds.checked_mul(per_second)?.checked_add(fraction / (1_000_000_000 / per_second))
}

/// Narrows a column's type from a sample of its non-null values: the first of bool,
/// int64, float64, date32, timestamp[s] that every value parses as, else string.
#[derive(Debug, Clone)]
pub struct Inference {
    candidates: [bool; 5],
    seen: bool,
}

const CANDIDATES: [ColumnType; 5] = [
    ColumnType::Bool,
    ColumnType::Int64,
    ColumnType::Float64,
    ColumnType::Date32,
    ColumnType::Timestamp(TimeUnit::Second),
];

impl Default for Inference {
    fn default() -> Self {
        Self { candidates: [true; 5], seen: false }
    }
}

impl Inference {
    pub fn observe(&mut self, text: &[u8]) {
        self.seen = true;
        for (i, ty) in CANDIDATES.iter().enumerate() {
            if self.candidates[i] && parse(*ty, text).is_none() {
                self.candidates[i] = false;
            }
        }
    }

    pub fn result(&self) -> ColumnType {
        if !self.seen {
            return ColumnType::String;
        }
        CANDIDATES.iter().zip(self.candidates).find(|(_, ok)| *ok).map(|(ty, _)| *ty).unwrap_or(ColumnType::String)
    }
}

/// The schema of the table being written: names and types, in output order.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub names: Vec<String>,
    pub types: Vec<ColumnType>,
}

impl Columns {
    pub fn arrow(&self) -> Arc<Schema> {
        Arc::new(Schema::new(
            self.names.iter().zip(&self.types).map(|(n, t)| Field::new(n, t.arrow(), true)).collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parses_as_its_type() {
        assert_eq!(parse(ColumnType::Int64, b"-42"), Some(Value::Int(-42)));
        assert_eq!(parse(ColumnType::Int64, b"99999999999999999999"), None);
        assert_eq!(parse(ColumnType::Int32, b"3000000000"), None);
        assert_eq!(parse(ColumnType::Float64, b"1.5e3"), Some(Value::Float(1500.0)));
        assert_eq!(parse(ColumnType::Date32, b"1970-01-02"), Some(Value::Temporal(1)));
        assert_eq!(parse(ColumnType::Date32, b"2013-02-30"), None);
        let ts = |t: &[u8], u| parse(ColumnType::Timestamp(u), t);
        assert_eq!(ts(b"2013-01-01 05:00:00", TimeUnit::Second), Some(Value::Temporal(1_357_016_400)));
        assert_eq!(ts(b"2013-01-01T05:00:00Z", TimeUnit::Second), Some(Value::Temporal(1_357_016_400)));
        assert_eq!(ts(b"2013-01-01T07:00:00+02:00", TimeUnit::Second), Some(Value::Temporal(1_357_016_400)));
        assert_eq!(ts(b"1970-01-01 00:00:01.5", TimeUnit::Millisecond), Some(Value::Temporal(1_500)));
        assert_eq!(ts(b"2013-01-01 25:00:00", TimeUnit::Second), None);
    }

    #[test]
    fn inference_takes_the_narrowest_type_every_value_fits() {
        let infer = |values: &[&str]| {
            let mut i = Inference::default();
            values.iter().for_each(|v| i.observe(v.as_bytes()));
            i.result()
        };
        assert_eq!(infer(&["1", "2"]), ColumnType::Int64);
        assert_eq!(infer(&["1", "2.5"]), ColumnType::Float64);
        assert_eq!(infer(&["true", "FALSE"]), ColumnType::Bool);
        assert_eq!(infer(&["2013-01-01 05:00:00"]), ColumnType::Timestamp(TimeUnit::Second));
        assert_eq!(infer(&["2013-01-01"]), ColumnType::Date32);
        assert_eq!(infer(&["1", "x"]), ColumnType::String);
        assert_eq!(infer(&[]), ColumnType::String);
    }
}

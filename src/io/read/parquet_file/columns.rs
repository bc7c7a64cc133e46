//! The columns of one Parquet batch, whatever accepted Arrow type each has: which types a
//! column may have ([`accepts`]), and accessors that read row `i` as the CSV reader reads a
//! field ([`Text`], [`Times`], [`Nums`]).

use super::super::fields::{self, Cause, Col};
use crate::features::{EventKind, Timestamp, DAY};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Decimal32Type, Decimal64Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{
    Array, ArrowPrimitiveType, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray,
    StringArray, StringViewArray,
};
use arrow_schema::{DataType, TimeUnit};

// ---------------------------------------------------------------------------------------------
// Types

fn is_text(dt: &DataType) -> bool {
    use DataType::*;
    match dt {
        Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView => true,
        Dictionary(_, v) => matches!(
            **v,
            Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView
        ),
        _ => false,
    }
}

pub(super) fn accepts(col: Col, dt: &DataType) -> bool {
    use DataType::*;
    if *dt == Null || is_text(dt) {
        return true;
    }
    match col {
        Col::Ts | Col::RegisteredAt => matches!(dt, Timestamp(_, _) | Date32 | Date64),
        Col::Amount => {
            matches!(
                dt,
                Float32 | Float64 | Decimal32(_, _) | Decimal64(_, _) | Decimal128(_, _)
            ) || dt.is_integer()
        }
        Col::WatchSeconds => dt.is_integer(),
        _ => false,
    }
}

pub(super) fn expected(col: Col) -> &'static str {
    match col {
        Col::Ts | Col::RegisteredAt => "a string (RFC 3339 or YYYY-MM-DD), a Timestamp or a Date32",
        Col::Amount => "a decimal: Float32, Float64, an integer, Decimal128, or a string",
        Col::WatchSeconds => "an integer (or a string of digits)",
        _ => "a string (Utf8, LargeUtf8 or Utf8View)",
    }
}

// ---------------------------------------------------------------------------------------------
// Column accessors over one batch

/// A text column.
pub(super) enum Text<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Binary(&'a BinaryArray),
    LargeBinary(&'a LargeBinaryArray),
    BinaryView(&'a BinaryViewArray),
    Dict {
        array: &'a dyn Array,
        keys: Vec<usize>,
        values: Box<Text<'a>>,
        n_values: usize,
    },
    Null,
}

impl<'a> Text<'a> {
    pub(super) fn new(a: &'a dyn Array) -> Option<Text<'a>> {
        Some(match a.data_type() {
            DataType::Utf8 => Text::Utf8(a.as_string_opt::<i32>()?),
            DataType::LargeUtf8 => Text::LargeUtf8(a.as_string_opt::<i64>()?),
            DataType::Utf8View => Text::Utf8View(a.as_string_view_opt()?),
            DataType::Binary => Text::Binary(a.as_binary_opt::<i32>()?),
            DataType::LargeBinary => Text::LargeBinary(a.as_binary_opt::<i64>()?),
            DataType::BinaryView => Text::BinaryView(a.as_binary_view_opt()?),
            DataType::Dictionary(_, _) => {
                let d = a.as_any_dictionary_opt()?;
                let values = d.values().as_ref();
                let inner = Text::new(values)?;
                if matches!(inner, Text::Dict { .. }) {
                    return None;
                }
                Text::Dict {
                    array: a,
                    keys: d.normalized_keys(),
                    values: Box::new(inner),
                    n_values: values.len(),
                }
            }
            DataType::Null => Text::Null,
            _ => return None,
        })
    }

    /// The bytes of row `i`; `None` when null.
    #[inline]
    fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self {
            Text::Utf8(a) => (!a.is_null(i)).then(|| a.value(i).as_bytes()),
            Text::LargeUtf8(a) => (!a.is_null(i)).then(|| a.value(i).as_bytes()),
            Text::Utf8View(a) => (!a.is_null(i)).then(|| a.value(i).as_bytes()),
            Text::Binary(a) => (!a.is_null(i)).then(|| a.value(i)),
            Text::LargeBinary(a) => (!a.is_null(i)).then(|| a.value(i)),
            Text::BinaryView(a) => (!a.is_null(i)).then(|| a.value(i)),
            Text::Dict {
                array,
                keys,
                values,
                n_values,
            } => {
                if array.is_null(i) {
                    return None;
                }
                let k = *keys.get(i)?;
                if k >= *n_values {
                    return None;
                }
                values.get(k)
            }
            Text::Null => None,
        }
    }

    /// Row `i`, empty when null.
    #[inline]
    pub(super) fn bytes(&self, i: usize) -> &'a [u8] {
        self.get(i).unwrap_or_default()
    }
}

fn prim<T: ArrowPrimitiveType>(a: &dyn Array) -> Option<&[T::Native]> {
    Some(a.as_primitive_opt::<T>()?.values())
}

/// A time column.
pub(super) enum Times<'a> {
    Text(Text<'a>),
    /// Timestamps and Date64: `per_second` ticks per second.
    Ticks {
        values: &'a [i64],
        array: &'a dyn Array,
        per_second: i64,
    },
    Days {
        values: &'a [i32],
        array: &'a dyn Array,
    },
}

impl<'a> Times<'a> {
    pub(super) fn new(a: &'a dyn Array) -> Option<Times<'a>> {
        let ticks = |values, per_second| Times::Ticks {
            values,
            array: a,
            per_second,
        };
        Some(match a.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => ticks(prim::<TimestampSecondType>(a)?, 1),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                ticks(prim::<TimestampMillisecondType>(a)?, 1_000)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                ticks(prim::<TimestampMicrosecondType>(a)?, 1_000_000)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                ticks(prim::<TimestampNanosecondType>(a)?, 1_000_000_000)
            }
            DataType::Date64 => ticks(prim::<Date64Type>(a)?, 1_000),
            DataType::Date32 => Times::Days {
                values: prim::<Date32Type>(a)?,
                array: a,
            },
            _ => Times::Text(Text::new(a)?),
        })
    }

    /// Row `i`; `None` when null or blank.
    #[inline]
    pub(super) fn get(&self, i: usize) -> Result<Option<Timestamp>, Cause> {
        match self {
            Times::Text(t) => fields::optional_timestamp(t.bytes(i)),
            Times::Ticks {
                values,
                array,
                per_second,
            } => Ok((!array.is_null(i)).then(|| values[i].div_euclid(*per_second))),
            Times::Days { values, array } => {
                Ok((!array.is_null(i)).then(|| i64::from(values[i]) * DAY))
            }
        }
    }

    pub(super) fn show(&self, i: usize) -> String {
        match self {
            Times::Text(t) => fields::shown(t.bytes(i)),
            Times::Ticks {
                values, per_second, ..
            } => format!("{} ticks of 1/{per_second} s", values[i]),
            Times::Days { values, .. } => format!("{} days", values[i]),
        }
    }
}

/// The values of a numeric column.
pub(super) enum NumValues<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    D32(&'a [i32], i8),
    D64(&'a [i64], i8),
    D128(&'a [i128], i8),
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(v) => v as f64,
            Num::Float(v) => v,
        }
    }
}

fn unscale(v: i128, scale: i8) -> Num {
    Num::Float(v as f64 / 10f64.powi(i32::from(scale)))
}

impl NumValues<'_> {
    #[inline]
    fn get(&self, i: usize) -> Num {
        match self {
            NumValues::F32(v) => Num::Float(f64::from(v[i])),
            NumValues::F64(v) => Num::Float(v[i]),
            NumValues::I8(v) => Num::Int(i128::from(v[i])),
            NumValues::I16(v) => Num::Int(i128::from(v[i])),
            NumValues::I32(v) => Num::Int(i128::from(v[i])),
            NumValues::I64(v) => Num::Int(i128::from(v[i])),
            NumValues::U8(v) => Num::Int(i128::from(v[i])),
            NumValues::U16(v) => Num::Int(i128::from(v[i])),
            NumValues::U32(v) => Num::Int(i128::from(v[i])),
            NumValues::U64(v) => Num::Int(i128::from(v[i])),
            NumValues::D32(v, s) => unscale(i128::from(v[i]), *s),
            NumValues::D64(v, s) => unscale(i128::from(v[i]), *s),
            NumValues::D128(v, s) => unscale(v[i], *s),
        }
    }
}

/// A numeric column (amount, watch_seconds), or text to parse like CSV.
pub(super) enum Nums<'a> {
    Text(Text<'a>),
    Values {
        values: NumValues<'a>,
        array: &'a dyn Array,
    },
}

impl<'a> Nums<'a> {
    pub(super) fn new(a: &'a dyn Array) -> Option<Nums<'a>> {
        let values = match a.data_type() {
            DataType::Float32 => NumValues::F32(prim::<Float32Type>(a)?),
            DataType::Float64 => NumValues::F64(prim::<Float64Type>(a)?),
            DataType::Int8 => NumValues::I8(prim::<Int8Type>(a)?),
            DataType::Int16 => NumValues::I16(prim::<Int16Type>(a)?),
            DataType::Int32 => NumValues::I32(prim::<Int32Type>(a)?),
            DataType::Int64 => NumValues::I64(prim::<Int64Type>(a)?),
            DataType::UInt8 => NumValues::U8(prim::<UInt8Type>(a)?),
            DataType::UInt16 => NumValues::U16(prim::<UInt16Type>(a)?),
            DataType::UInt32 => NumValues::U32(prim::<UInt32Type>(a)?),
            DataType::UInt64 => NumValues::U64(prim::<UInt64Type>(a)?),
            DataType::Decimal32(_, s) => NumValues::D32(prim::<Decimal32Type>(a)?, *s),
            DataType::Decimal64(_, s) => NumValues::D64(prim::<Decimal64Type>(a)?, *s),
            DataType::Decimal128(_, s) => NumValues::D128(prim::<Decimal128Type>(a)?, *s),
            _ => return Some(Nums::Text(Text::new(a)?)),
        };
        Some(Nums::Values { values, array: a })
    }

    #[inline]
    fn get(&self, i: usize) -> Option<Num> {
        match self {
            Nums::Text(_) => None,
            Nums::Values { values, array } => (!array.is_null(i)).then(|| values.get(i)),
        }
    }

    #[inline]
    pub(super) fn amount(&self, i: usize, kind: EventKind) -> Result<f64, Cause> {
        let v = match self {
            Nums::Text(t) => fields::amount_text(t.bytes(i))?,
            Nums::Values { .. } => self.get(i).map(Num::as_f64),
        };
        fields::check_amount(kind, v)
    }

    #[inline]
    pub(super) fn watch(&self, i: usize) -> Result<u32, Cause> {
        match self {
            Nums::Text(t) => fields::watch_text(t.bytes(i)),
            Nums::Values { .. } => match self.get(i) {
                None => Ok(0),
                Some(Num::Int(v)) => fields::check_watch(v),
                Some(Num::Float(_)) => Err(Cause::BadWatchSeconds),
            },
        }
    }

    pub(super) fn show(&self, i: usize) -> String {
        match self {
            Nums::Text(t) => fields::shown(t.bytes(i)),
            Nums::Values { .. } => match self.get(i) {
                None => String::new(),
                Some(Num::Int(v)) => v.to_string(),
                Some(Num::Float(v)) => v.to_string(),
            },
        }
    }
}

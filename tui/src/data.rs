//! What a panel draws: a small table of JSON values with its column order kept.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Rows of values under named columns, in the order the source gave them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// One vector per row, aligned with `columns` (`Null` where a row lacks the column).
    pub rows: Vec<Vec<Value>>,
    /// A number the source attached (the live windows' p99 objective), used for SLO colouring.
    pub slo: Option<f64>,
    /// What the source says about the figures, shown in the status bar (a merge of several servers names those
    /// it could not read).
    pub notice: Option<String>,
}

impl Table {
    /// A table from rows given as ordered (name, value) lists; columns are the union in first-seen order.
    pub fn from_objects(objects: Vec<Vec<(String, Value)>>) -> Table {
        let mut columns: Vec<String> = Vec::new();
        for obj in &objects {
            for (k, _) in obj {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        let rows = objects
            .into_iter()
            .map(|obj| {
                let mut row = vec![Value::Null; columns.len()];
                for (k, v) in obj {
                    if let Some(i) = columns.iter().position(|c| *c == k) {
                        row[i] = v;
                    }
                }
                row
            })
            .collect();
        Table { columns, rows, slo: None, notice: None }
    }

    /// Parses a JSON array of objects (the SQL API's answer), keeping the key order of the text.
    pub fn from_json_rows(text: &str) -> Result<Table, serde_json::Error> {
        let rows: OrderedRows = serde_json::from_str(text)?;
        Ok(Table::from_objects(rows.0))
    }

    /// Reads the rows at `pointer` of a JSON document (an array of objects, or one object as one row). When the
    /// pointer is absent and the document itself is an array, the document is used.
    pub fn from_json_at(text: &str, pointer: Option<&str>) -> Result<Table, String> {
        let doc: OrderedValue = serde_json::from_str(text).map_err(|e| format!("answer is not JSON: {e}"))?;
        let mut node = &doc;
        if let Some(p) = pointer.filter(|p| !p.is_empty() && *p != "/") {
            let mut found = Some(node);
            for part in p.trim_start_matches('/').split('/') {
                found = found.and_then(|n| match n {
                    OrderedValue::Object(o) => o.iter().find(|(k, _)| k == part).map(|(_, v)| v),
                    OrderedValue::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                    OrderedValue::Scalar(_) => None,
                });
            }
            match (found, &doc) {
                (Some(n), _) => node = n,
                (None, OrderedValue::Array(_)) => {}
                (None, _) => return Err(format!("the answer has no {p}")),
            }
        }
        let objects = match node {
            OrderedValue::Array(items) => items.iter().map(OrderedValue::to_row).collect(),
            other => vec![other.to_row()],
        };
        Ok(Table::from_objects(objects))
    }

    /// The index of a column.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// A cell as a number, when it is one (numbers and numeric strings).
    pub fn number(&self, row: usize, col: usize) -> Option<f64> {
        as_number(self.rows.get(row)?.get(col)?)
    }
}

/// A JSON value as a number, when it is one.
pub fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// A JSON document whose objects keep their key order (serde_json's `Map` sorts keys without `preserve_order`).
#[derive(Debug, Clone)]
enum OrderedValue {
    Object(Vec<(String, OrderedValue)>),
    Array(Vec<OrderedValue>),
    Scalar(Value),
}

impl OrderedValue {
    fn to_value(&self) -> Value {
        match self {
            OrderedValue::Scalar(v) => v.clone(),
            OrderedValue::Array(a) => Value::Array(a.iter().map(OrderedValue::to_value).collect()),
            OrderedValue::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_value())).collect()),
        }
    }

    fn to_row(&self) -> Vec<(String, Value)> {
        match self {
            OrderedValue::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.to_value())).collect(),
            other => vec![("value".to_string(), other.to_value())],
        }
    }
}

impl<'de> serde::Deserialize<'de> for OrderedValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::String(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::Null))
            }
            fn visit_none<E>(self) -> Result<OrderedValue, E> {
                Ok(OrderedValue::Scalar(Value::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<OrderedValue, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedValue, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OrderedValue::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedValue, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, OrderedValue>()? {
                    out.push((k, v));
                }
                Ok(OrderedValue::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

struct OrderedRows(Vec<Vec<(String, Value)>>);

impl<'de> serde::Deserialize<'de> for OrderedRows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rows: Vec<OrderedValue> = serde::Deserialize::deserialize(d)?;
        Ok(OrderedRows(rows.iter().map(OrderedValue::to_row).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_column_order_and_pointer() {
        let t = Table::from_json_rows(r#"[{"z":1,"a":"x"},{"a":"y","m":2.5}]"#).unwrap();
        assert_eq!(t.columns, ["z", "a", "m"]);
        assert_eq!(t.rows[1], vec![Value::Null, Value::from("y"), Value::from(2.5)]);
        let t = Table::from_json_at(r#"{"budgets":[{"name":"b","cap_usd":5}]}"#, Some("/budgets")).unwrap();
        assert_eq!((t.columns.len(), t.rows.len()), (2, 1));
        assert!(Table::from_json_at(r#"{"x":1}"#, Some("/budgets")).unwrap_err().contains("/budgets"));
        let t = Table::from_json_at(r#"[{"a":1}]"#, Some("/alerts")).unwrap();
        assert_eq!(t.rows.len(), 1);
    }
}

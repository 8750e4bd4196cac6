//! The fixed answers of the metadata calls JDBC drivers and DBeaver make: the SQL types tailscope's engine has
//! (`GetXdbcTypeInfo`), and the schemas of the key calls, which answer no rows.

use std::sync::{Arc, LazyLock};

use arrow_flight::sql::metadata::{XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{Nullable, Searchable, XdbcDataType};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// A type as `GetXdbcTypeInfo` lists it: nullable, searchable, no literal quoting, no precision.
fn plain(name: &str, data_type: XdbcDataType) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size: None,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: false,
        searchable: Searchable::Full,
        unsigned_attribute: None,
        fixed_prec_scale: false,
        auto_increment: None,
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    }
}

/// A signed number type of `digits` digits in base `radix`.
fn number(name: &str, data_type: XdbcDataType, digits: i32, radix: i32) -> XdbcTypeInfo {
    XdbcTypeInfo {
        column_size: Some(digits),
        unsigned_attribute: Some(false),
        auto_increment: Some(false),
        num_prec_radix: Some(radix),
        ..plain(name, data_type)
    }
}

/// A type whose literals are quoted (`'text'`, `X'00ff'`, `TIMESTAMP '2026-01-01 00:00:00'`).
fn quoted(name: &str, data_type: XdbcDataType, prefix: &str) -> XdbcTypeInfo {
    XdbcTypeInfo { literal_prefix: Some(prefix.into()), literal_suffix: Some("'".into()), ..plain(name, data_type) }
}

/// The SQL types of tailscope's engine (DataFusion's names) as JDBC sees them.
pub static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut types = XdbcTypeInfoDataBuilder::new();
    for info in [
        XdbcTypeInfo { column_size: Some(1), ..plain("BOOLEAN", XdbcDataType::XdbcBit) },
        number("TINYINT", XdbcDataType::XdbcTinyint, 3, 10),
        number("SMALLINT", XdbcDataType::XdbcSmallint, 5, 10),
        number("INTEGER", XdbcDataType::XdbcInteger, 10, 10),
        number("BIGINT", XdbcDataType::XdbcBigint, 19, 10),
        number("REAL", XdbcDataType::XdbcReal, 24, 2),
        number("DOUBLE", XdbcDataType::XdbcDouble, 53, 2),
        XdbcTypeInfo {
            create_params: Some(vec!["precision".into(), "scale".into()]),
            minimum_scale: Some(0),
            maximum_scale: Some(38),
            ..number("DECIMAL", XdbcDataType::XdbcDecimal, 38, 10)
        },
        XdbcTypeInfo { case_sensitive: true, ..quoted("VARCHAR", XdbcDataType::XdbcVarchar, "'") },
        XdbcTypeInfo { searchable: Searchable::Basic, ..quoted("VARBINARY", XdbcDataType::XdbcVarbinary, "X'") },
        quoted("DATE", XdbcDataType::XdbcDate, "DATE '"),
        quoted("TIME", XdbcDataType::XdbcTime, "TIME '"),
        XdbcTypeInfo {
            minimum_scale: Some(0),
            maximum_scale: Some(9),
            ..quoted("TIMESTAMP", XdbcDataType::XdbcTimestamp, "TIMESTAMP '")
        },
        quoted("INTERVAL", XdbcDataType::XdbcInterval, "INTERVAL '"),
    ] {
        types.append(info);
    }
    types.build().expect("the static type list is well-formed")
});

fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(name, data_type, nullable)| Field::new(*name, data_type.clone(), *nullable))
            .collect::<Vec<_>>(),
    ))
}

/// `GetPrimaryKeys`' schema (Flight SQL's `CommandGetPrimaryKeys`).
pub static PRIMARY_KEYS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("catalog_name", DataType::Utf8, true),
        ("db_schema_name", DataType::Utf8, true),
        ("table_name", DataType::Utf8, false),
        ("column_name", DataType::Utf8, false),
        ("key_name", DataType::Utf8, true),
        ("key_sequence", DataType::Int32, false),
    ])
});

/// The schema of `GetImportedKeys`, `GetExportedKeys` and `GetCrossReference` (one in Flight SQL).
pub static FOREIGN_KEYS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(&[
        ("pk_catalog_name", DataType::Utf8, true),
        ("pk_db_schema_name", DataType::Utf8, true),
        ("pk_table_name", DataType::Utf8, false),
        ("pk_column_name", DataType::Utf8, false),
        ("fk_catalog_name", DataType::Utf8, true),
        ("fk_db_schema_name", DataType::Utf8, true),
        ("fk_table_name", DataType::Utf8, false),
        ("fk_column_name", DataType::Utf8, false),
        ("key_sequence", DataType::Int32, false),
        ("fk_key_name", DataType::Utf8, true),
        ("pk_key_name", DataType::Utf8, true),
        ("update_rule", DataType::UInt8, false),
        ("delete_rule", DataType::UInt8, false),
    ])
});

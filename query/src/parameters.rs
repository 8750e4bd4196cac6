//! Statement parameters, for Flight SQL prepared statements: `?` (ADBC, JDBC) and `$1`, `$2`, ... placeholders,
//! their types as the planner infers them, and values bound to them.
//!
//! Values are bound into the logical plan as literals after the statement was parsed, checked and planned like any
//! other: a value is data and can never change what the statement does, and the read-only rules and limits apply
//! to the statement as written.

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value, visit_expressions_mut};

use crate::error::QueryError;

/// Numbers `?` placeholders `$1`, `$2`, ... in the order they appear in the text (and `?N`, SQLite's form, `$N`),
/// the form DataFusion binds. A statement mixing `?` with `$N` is refused: which value would go where is unclear.
pub fn number_placeholders(statement: &mut DFStatement) -> Result<(), QueryError> {
    let statement = match statement {
        DFStatement::Statement(s) => s.as_mut(),
        DFStatement::Explain(explain) => return number_placeholders(explain.statement.as_mut()),
        _ => return Ok(()),
    };
    // First the positions of the bare `?`, in visiting order; then their ranks by position in the text.
    let mut positions = Vec::new();
    let mut numbered = false;
    let _ = visit_expressions_mut(statement, |expr| {
        if let SqlExpr::Value(v) = expr
            && let Value::Placeholder(p) = &v.value
        {
            match p.as_str() {
                "?" => positions.push((v.span.start.line, v.span.start.column)),
                p if p.starts_with('$') && p[1..].bytes().all(|b| b.is_ascii_digit()) => numbered = true,
                _ => {}
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if numbered && !positions.is_empty() {
        return Err(QueryError::InvalidSql(
            "the statement mixes ? and $N placeholders: number them all ($1, $2, ...) or none (?)".into(),
        ));
    }
    let mut by_position: Vec<usize> = (0..positions.len()).collect();
    by_position.sort_by_key(|&i| positions[i]);
    let mut rank = vec![0; positions.len()];
    for (r, &i) in by_position.iter().enumerate() {
        rank[i] = r + 1;
    }
    let mut next = 0;
    let _ = visit_expressions_mut(statement, |expr| {
        if let SqlExpr::Value(v) = expr
            && let Value::Placeholder(p) = &mut v.value
        {
            if p == "?" {
                *p = format!("${}", rank[next]);
                next += 1;
            } else if let Some(n) = p.strip_prefix('?') {
                *p = format!("${n}");
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// The parameters `plan` takes, `$1` first: each the type the planner inferred from where it stands (a comparison
/// with a column, a function's argument), or `None` where nothing says (`SELECT ?`): any value goes.
pub fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>, QueryError> {
    let found = plan.get_parameter_types().map_err(QueryError::from_datafusion)?;
    let mut types = Vec::new();
    for (id, data_type) in found {
        let index =
            id.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|n| *n >= 1).ok_or_else(|| {
                QueryError::InvalidSql(format!("placeholder {id} is not supported: use ? or $1, $2, ..."))
            })?;
        if types.len() < index {
            types.resize(index, None);
        }
        types[index - 1] = data_type;
    }
    Ok(types)
}

/// `plan` with `values` in place of its parameters: as many as it takes, each cast to its parameter's inferred type
/// (a client binds an `Int32` where the column is `Int64`, a `Utf8` where it is `Utf8View`).
pub fn bind(plan: LogicalPlan, values: Vec<ScalarValue>) -> Result<LogicalPlan, QueryError> {
    let types = parameter_types(&plan)?;
    if types.len() != values.len() {
        return Err(QueryError::InvalidSql(format!(
            "the statement takes {} parameter(s) (? or $1, $2, ...), {} were bound",
            types.len(),
            values.len()
        )));
    }
    if types.is_empty() {
        return Ok(plan);
    }
    let values = values
        .into_iter()
        .zip(types)
        .enumerate()
        .map(|(i, (value, wanted))| match wanted {
            Some(wanted) if value.data_type() != wanted => value.cast_to(&wanted).map_err(|e| {
                QueryError::InvalidSql(format!(
                    "parameter ${} is {} but the statement wants {wanted}: {}",
                    i + 1,
                    value.data_type(),
                    e.strip_backtrace()
                ))
            }),
            _ => Ok(value),
        })
        .collect::<Result<Vec<_>, _>>()?;
    plan.with_param_values(values).map_err(QueryError::from_datafusion)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::sql::parser::DFParser;
    use tailscope_core::catalog::Catalog;
    use tailscope_core::config::QueryConfig;

    use super::*;
    use crate::Engine;

    fn numbered(sql: &str) -> Result<String, QueryError> {
        let mut statements = DFParser::parse_sql(sql).unwrap();
        let mut statement = statements.pop_front().unwrap();
        number_placeholders(&mut statement)?;
        Ok(statement.to_string())
    }

    #[test]
    fn question_marks_are_numbered_in_the_order_they_are_written() {
        assert_eq!(
            numbered("SELECT ? AS a FROM t WHERE x = ? AND y IN (SELECT z FROM u WHERE w > ?) LIMIT ?").unwrap(),
            "SELECT $1 AS a FROM t WHERE x = $2 AND y IN (SELECT z FROM u WHERE w > $3) LIMIT $4"
        );
        // A CTE is visited after the body it precedes in the text by some visitors; the text decides.
        assert_eq!(
            numbered("WITH c AS (SELECT ? AS v) SELECT v, ? FROM c").unwrap(),
            "WITH c AS (SELECT $1 AS v) SELECT v, $2 FROM c"
        );
        assert_eq!(numbered("SELECT ?2, ?1").unwrap(), "SELECT $2, $1");
        assert_eq!(numbered("SELECT $2, $1, '?'").unwrap(), "SELECT $2, $1, '?'");
        assert_eq!(numbered("EXPLAIN SELECT ?").unwrap(), "EXPLAIN SELECT $1");
        assert!(numbered("SELECT ?, $1").unwrap_err().to_string().contains("mixes"));
    }

    #[tokio::test]
    async fn values_are_bound_as_data_cast_to_their_parameters_types() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(Catalog::new(dir.path()), QueryConfig::default()).await.unwrap();
        let sql = "SELECT value FROM range(10) WHERE value >= ? AND value < $2 ORDER BY value";
        // `?` and `$2` together are refused; numbered alike they plan, with the types the comparisons give.
        assert!(engine.prepare(sql).await.unwrap_err().to_string().contains("mixes"));
        let sql = sql.replace('?', "$1");
        let prepared = engine.prepare(&sql).await.unwrap();
        assert_eq!(prepared.parameters, [Some(DataType::Int64), Some(DataType::Int64)]);
        assert_eq!(prepared.schema.field(0).name(), "value");

        let rows = |values: Vec<ScalarValue>| {
            let engine = engine.clone();
            let sql = sql.clone();
            async move {
                let out = engine.stream_with_parameters(&sql, values).await?.collect().await?;
                Ok::<_, QueryError>(
                    out.batches
                        .iter()
                        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                        .collect::<Vec<_>>(),
                )
            }
        };
        assert_eq!(rows(vec![ScalarValue::Int64(Some(2)), ScalarValue::Int64(Some(5))]).await.unwrap(), [2, 3, 4]);
        // An Int32 and a numeric string are cast to Int64.
        let cast = vec![ScalarValue::Int32(Some(8)), ScalarValue::Utf8(Some("10".into()))];
        assert_eq!(rows(cast).await.unwrap(), [8, 9]);
        for (values, says) in [
            (vec![ScalarValue::Int64(Some(1))], "takes 2 parameter(s)"),
            (vec![ScalarValue::Int64(Some(1)); 3], "3 were bound"),
            (vec![ScalarValue::Utf8(Some("1; DROP TABLE spans".into())), ScalarValue::Int64(Some(1))], "$1 is Utf8"),
        ] {
            let err = rows(values).await.unwrap_err();
            assert!(matches!(err, QueryError::InvalidSql(_)) && err.to_string().contains(says), "{err}");
        }
        // A plain statement with a placeholder and no values says what is missing.
        let err = engine.schema_of("SELECT $1 + 1 AS n").await.unwrap_err();
        assert!(err.to_string().contains("takes 1 parameter(s)"), "{err}");
        // Named placeholders are not Flight SQL's.
        assert!(engine.prepare("SELECT $name AS n").await.unwrap_err().to_string().contains("$name"));
    }
}

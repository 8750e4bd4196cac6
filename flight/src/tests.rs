//! The Flight SQL service called in-process over an engine on an empty data dir: statements answer, and refusals
//! reach the client with the gRPC code their kind maps to.

use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{CommandStatementQuery, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, Ticket};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use tailscope_core::catalog::Catalog;
use tailscope_core::config::QueryConfig;
use tonic::{Code, Request};

use super::{FlightSqlServer, grpc_status};
use query::{Engine, QueryError};

async fn server() -> (tempfile::TempDir, FlightSqlServer) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(Catalog::new(dir.path()), QueryConfig::default()).await.unwrap();
    (dir, FlightSqlServer::new(engine))
}

fn statement(sql: &str) -> CommandStatementQuery {
    CommandStatementQuery { query: sql.into(), transaction_id: None }
}

/// `GetFlightInfo` for `sql`: plans it (and so refuses it) without running it.
async fn info(server: &FlightSqlServer, sql: &str) -> Result<(), tonic::Status> {
    let descriptor = FlightDescriptor::new_cmd(sql.to_string());
    server.get_flight_info_statement(statement(sql), Request::new(descriptor)).await.map(drop)
}

/// `DoGet` for `sql`'s ticket, decoded as a client would.
async fn rows(server: &FlightSqlServer, sql: &str) -> Result<Vec<RecordBatch>, FlightError> {
    let ticket = TicketStatementQuery { statement_handle: sql.as_bytes().to_vec().into() };
    let response = server.do_get_statement(ticket, Request::new(Ticket::new(Vec::new()))).await?;
    let data = response.into_inner().map_err(|status| FlightError::Tonic(Box::new(status)));
    FlightRecordBatchStream::new_from_flight_data(data).try_collect().await
}

#[tokio::test]
async fn a_statement_is_planned_then_streamed() {
    let (_dir, server) = server().await;
    let sql = "SELECT value * 2 AS doubled FROM range(3) ORDER BY doubled";
    info(&server, sql).await.unwrap();
    let batches = rows(&server, sql).await.unwrap();
    let values: Vec<i64> =
        batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
    assert_eq!(values, [0, 2, 4]);
}

#[tokio::test]
async fn refusals_reach_the_client_with_their_code_and_message() {
    let (_dir, server) = server().await;
    let deep = format!("SELECT {}1 AS n", "1 + ".repeat(4_999));
    for (sql, code, says) in [
        ("SELECT no_such_column FROM spans", Code::InvalidArgument, "no_such_column"),
        ("CREATE TABLE t (x INT)", Code::PermissionDenied, "read-only"),
        ("INSERT INTO spans SELECT * FROM spans", Code::PermissionDenied, "read-only"),
        (deep.as_str(), Code::InvalidArgument, "max_expr_depth"),
    ] {
        let status = info(&server, sql).await.unwrap_err();
        assert_eq!(status.code(), code, "{}: {status:?}", &sql[..sql.len().min(40)]);
        assert!(status.message().contains(says), "{status:?}");
        // The ticket of a statement that cannot run is refused the same way.
        match rows(&server, sql).await.unwrap_err() {
            FlightError::Tonic(status) => assert_eq!(status.code(), code, "{status:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn each_kind_of_query_error_has_its_grpc_code() {
    let d = Duration::from_secs(1);
    for (error, code) in [
        (QueryError::InvalidSql("bad".into()), Code::InvalidArgument),
        (QueryError::LimitExceeded("deep".into()), Code::InvalidArgument),
        (QueryError::ReadOnly { statement: "INSERT".into() }, Code::PermissionDenied),
        (QueryError::Timeout { timeout: d }, Code::DeadlineExceeded),
        (QueryError::TooBusy { max_concurrent: 4, waited: d }, Code::Unavailable),
        (QueryError::UnreadableFile("f.parquet".into()), Code::Unavailable),
        (QueryError::ResourcesExhausted("memory".into()), Code::ResourceExhausted),
        (QueryError::BodyTooLarge { limit: 1 }, Code::ResourceExhausted),
        (QueryError::Internal("bug".into()), Code::Internal),
    ] {
        let status = grpc_status(&error);
        assert_eq!(status.code(), code, "{error:?}");
        assert_eq!(status.message(), error.to_string());
    }
}

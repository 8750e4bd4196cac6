//! Arrow Flight SQL, so ADBC, JDBC (DBeaver) and Grafana's Flight SQL data source can query tailscope.
//!
//! Statements are stateless: the ticket carries the SQL itself, so any server instance can answer any ticket.
//! Prepared statements take parameters (`?`, or `$1`, `$2`, ...) bound with `DoPut`, so they are state the server
//! holds behind a random handle, bounded in number, bytes and idle time ([`prepared`]); values are bound into the
//! planned statement as data, after the same read-only checks and limits as any statement. Metadata calls
//! (`GetCatalogs`, `GetDbSchemas`, `GetTables`, `GetTableTypes`, `GetSqlInfo`, `GetXdbcTypeInfo`) answer from the
//! engine's relations and types; the key calls (`GetPrimaryKeys`, `GetImportedKeys`, `GetExportedKeys`,
//! `GetCrossReference`) answer empty, as tailscope's tables have no keys. Writes are refused as in every other
//! surface. There is no authentication: the listener is on loopback by default; put it behind a TLS-terminating
//! proxy to expose it.
//!
//! A crate of its own above `query`: the gRPC server (tonic) and Arrow Flight are linked by the binary that serves
//! them, not by every reader of the engine (the dashboard, the CLI's `--data-dir`).

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use query::{CATALOG_NAME, Engine, QueryError, SCHEMA_NAME};
use tailscope_core::projects::Visibility;

mod metadata;
pub mod prepared;
mod status;
#[cfg(test)]
mod tests;

use prepared::PreparedStatements;

pub use status::grpc_status;

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "tailscope");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow IPC format version (Schema.fbs MetadataVersion V5).
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, false);
    builder.build().expect("static SqlInfo is well-formed")
});

/// The Flight SQL service over an [`Engine`].
#[derive(Clone)]
pub struct FlightSqlServer {
    engine: Engine,
    prepared: Arc<PreparedStatements>,
}

impl FlightSqlServer {
    /// A service answering from `engine`, holding prepared statements within the default [`prepared::Limits`].
    pub fn new(engine: Engine) -> FlightSqlServer {
        FlightSqlServer::with_limits(engine, prepared::Limits::default())
    }

    /// A service answering from `engine`, holding prepared statements within `limits`.
    pub fn with_limits(engine: Engine, limits: prepared::Limits) -> FlightSqlServer {
        let prepared = Arc::new(PreparedStatements::new(limits, engine.memory()));
        FlightSqlServer { engine, prepared }
    }

    /// The tonic service, to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> FlightServiceServer<FlightSqlServer> {
        FlightServiceServer::new(self).max_decoding_message_size(64 * 1024 * 1024)
    }
}

/// The Flight SQL service over `engine` as a tower service, for `collector::net::serve` with
/// `collector::net::Protocol::Grpc` (the connection limits of `[server]` apply).
pub fn service(engine: Engine) -> tonic::service::Routes {
    tonic::service::Routes::new(FlightSqlServer::new(engine).into_service())
}

type DoGetStream = <FlightSqlServer as FlightService>::DoGetStream;

fn sql_from_bytes(bytes: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(bytes).map_err(|_| Status::invalid_argument("statement handle is not UTF-8 SQL"))
}

/// `schema` as the IPC message Flight SQL carries schemas in.
fn ipc_schema(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(
        |e: datafusion::arrow::error::ArrowError| Status::internal(format!("cannot encode the schema: {e}")),
    )?;
    Ok(bytes)
}

/// The one row of parameter values a `DoPut` carries, read batch by batch and refused as soon as it passes
/// `max_bytes` or a second row arrives (a query runs with one set of values at a time).
async fn parameter_row(stream: PeekableFlightDataStream, max_bytes: usize) -> Result<Vec<ScalarValue>, Status> {
    let data = stream.map_err(|status| arrow_flight::error::FlightError::Tonic(Box::new(status)));
    let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
    let mut row = None;
    let mut bytes = 0usize;
    while let Some(batch) = batches.try_next().await.map_err(Status::from)? {
        bytes = bytes.saturating_add(batch.get_array_memory_size());
        if bytes > max_bytes {
            return Err(Status::invalid_argument(format!(
                "the parameter values take more than {max_bytes} bytes, the bound of a statement \
                 (query.max_sql_bytes)"
            )));
        }
        for i in 0..batch.num_rows() {
            if row.is_some() {
                return Err(Status::invalid_argument(
                    "bind one row of parameter values per execution (a query runs with one set of values)",
                ));
            }
            let values = batch
                .columns()
                .iter()
                .map(|column| ScalarValue::try_from_array(column, i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::invalid_argument(format!("cannot read the parameter values: {e}")))?;
            row = Some(values);
        }
    }
    Ok(row.unwrap_or_default())
}

fn flight_info(schema: &SchemaRef, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true))
}

fn stream_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Response<DoGetStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

/// An answer of no rows: the key calls, since tailscope's tables have no keys.
fn no_rows(schema: &SchemaRef) -> Response<DoGetStream> {
    stream_batches(schema.clone(), vec![RecordBatch::new_empty(schema.clone())])
}

fn one_batch<E: std::fmt::Display>(schema: SchemaRef, batch: Result<RecordBatch, E>) -> Response<DoGetStream> {
    match batch {
        Ok(batch) => stream_batches(schema, vec![batch]),
        Err(e) => {
            let status = Status::internal(format!("cannot build the metadata batch: {e}"));
            Response::new(Box::pin(futures::stream::once(async move { Err(status) })))
        }
    }
}

impl FlightSqlServer {
    /// Streams the statement's rows, with `parameters` bound, as DataFusion produces them: gRPC flow control paces
    /// the query, and the timeout or an error ends the stream with its status.
    async fn run(
        &self,
        engine: &Engine,
        sql: &str,
        parameters: Vec<ScalarValue>,
    ) -> Result<Response<DoGetStream>, Status> {
        let stream = engine.stream_with_parameters(sql, parameters).await.map_err(|e| log_error(sql, e))?;
        let schema = stream.schema();
        let owned_sql = sql.to_string();
        let batches = stream.map_err(move |e| FlightError::Tonic(Box::new(log_error(&owned_sql, e))));
        let stream = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn schema_of(&self, engine: &Engine, sql: &str) -> Result<SchemaRef, Status> {
        engine.schema_of(sql).await.map_err(|e| log_error(sql, e))
    }

    /// The engine as the request's key sees it: only its projects (the authentication layer puts what the key may
    /// see in the request, `collector::auth`); every project outside that layer. Every call that plans or runs SQL
    /// goes through it, so a ticket or a prepared statement handle runs with the projects of whoever presents it.
    fn engine_for<T>(&self, request: &Request<T>) -> Engine {
        self.engine.scoped(request.extensions().get::<Visibility>().cloned().unwrap_or_default())
    }
}

fn log_error(sql: &str, e: QueryError) -> Status {
    tracing::info!(error = %e, kind = e.kind(), sql, "flight sql query refused or failed");
    grpc_status(&e)
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    /// There is no authentication; answering the handshake lets clients configured with a user name connect.
    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let response = HandshakeResponse { protocol_version: 0, payload: Default::default() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(response)]))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.schema_of(&self.engine_for(&request), &query.query).await?;
        let ticket = TicketStatementQuery { statement_handle: query.query.into_bytes().into() };
        let info = flight_info(&schema, ticket.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.run(&self.engine_for(&request), sql_from_bytes(&ticket.statement_handle)?, Vec::new()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let prepared = self.engine_for(&request).prepare(&query.query).await.map_err(|e| log_error(&query.query, e))?;
        // A parameter whose type nothing in the statement says takes any value: `Null` says so.
        let parameters: Vec<Field> = prepared
            .parameters
            .iter()
            .enumerate()
            .map(|(i, t)| Field::new(format!("${}", i + 1), t.clone().unwrap_or(DataType::Null), true))
            .collect();
        Ok(ActionCreatePreparedStatementResult {
            dataset_schema: ipc_schema(&prepared.schema)?,
            parameter_schema: ipc_schema(&Schema::new(parameters))?,
            prepared_statement_handle: self.prepared.create(query.query, Instant::now())?.into(),
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = query.prepared_statement_handle;
        // An unknown handle is refused before its values are read.
        self.prepared.get(&handle, Instant::now())?;
        let values = parameter_row(request.into_inner(), self.engine.config().max_sql_bytes).await?;
        self.prepared.bind(&handle, values, Instant::now())?;
        // The same handle: the values are held under it.
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle) })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        self.prepared.close(&query.prepared_statement_handle);
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let statement = self.prepared.get(&cmd.prepared_statement_handle, Instant::now())?;
        // Planned with the values bound: too few or mistyped values are refused here, before a ticket is given.
        let schema = self
            .engine_for(&request)
            .schema_with_parameters(&statement.sql, statement.values)
            .await
            .map_err(|e| log_error(&statement.sql, e))?;
        let info = flight_info(&schema, cmd.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let statement = self.prepared.get(&cmd.prepared_statement_handle, Instant::now())?;
        self.run(&self.engine_for(&request), &statement.sql, statement.values).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME);
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME, SCHEMA_NAME);
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        // The builder applies the client's catalog, schema, name-pattern and type filters.
        let mut builder = query.into_builder();
        for relation in self.engine.relations() {
            builder
                .append(CATALOG_NAME, SCHEMA_NAME, &relation.name, relation.kind, &relation.schema)
                .map_err(|e| Status::internal(format!("cannot list table {}: {e}", relation.name)))?;
        }
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        Ok(Response::new(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        Ok(one_batch(schema, builder.build()))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&metadata::XDBC_TYPES).schema();
        Ok(Response::new(flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&metadata::XDBC_TYPES);
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = flight_info(&metadata::PRIMARY_KEYS, query.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(no_rows(&metadata::PRIMARY_KEYS))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = flight_info(&metadata::FOREIGN_KEYS, query.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(no_rows(&metadata::FOREIGN_KEYS))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = flight_info(&metadata::FOREIGN_KEYS, query.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(no_rows(&metadata::FOREIGN_KEYS))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = flight_info(&metadata::FOREIGN_KEYS, query.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(no_rows(&metadata::FOREIGN_KEYS))
    }

    async fn do_get_fallback(&self, _request: Request<Ticket>, message: Any) -> Result<Response<DoGetStream>, Status> {
        Err(Status::unimplemented(format!("tailscope does not answer {} tickets", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

//! `bare-axum [ADDR]`: answers `POST /alerts` with 200 after parsing the body as JSON (400
//! if it is not), the least any Alertmanager receiver must do. Same runtime, same axum and
//! the same release profile as kabar, so the ratio kabar/bare is kabar's own cost.

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;

async fn alerts(body: Bytes) -> (StatusCode, &'static str) {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) if value.get("alerts").is_some_and(|a| a.is_array()) => {
            (StatusCode::OK, "{\"ok\":true}")
        }
        _ => (StatusCode::BAD_REQUEST, "{\"error\":\"not an Alertmanager notification\"}"),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9196".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare-axum listening on {}", listener.local_addr()?);
    let app = Router::new().route("/alerts", post(alerts));
    axum::serve(listener, app).await
}

//! The admin API under `/api/v1/admin`.

pub mod api_keys;
pub mod apps;
pub mod dead_letters;
pub mod email;
pub mod email_inbound;
pub mod realtime;
pub mod scripts;
pub mod secrets;
pub mod triggers;

use super::AppState;
use utoipa_axum::router::OpenApiRouter;

/// Every admin route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(apps::routes())
        .merge(scripts::routes())
        .merge(secrets::routes())
        .merge(triggers::routes())
        .merge(dead_letters::routes())
        .merge(email::routes())
        .merge(email_inbound::routes())
        .merge(realtime::routes())
        .merge(api_keys::routes())
}

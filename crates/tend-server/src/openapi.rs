//! The OpenAPI description, served at `/api/v1/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as Spec;
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "tend API", description = "tend's control-plane API. Every endpoint needs `Authorization: Bearer <token>`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "meta", description = "Identity"),
        (name = "teams", description = "Teams and their notification channels"),
        (name = "tokens", description = "API tokens"),
        (name = "services", description = "The service catalog"),
        (name = "audit", description = "The audit trail"),
        (name = "deploy", description = "Releases, deployments and operations"),
        (name = "logs", description = "Every instance's output"),
        (name = "config", description = "Config vars, versioned with releases"),
        (name = "alerts", description = "Incidents, on-call rotations and escalation"),
    )
)]
struct Base;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Spec) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub(crate) fn base() -> Spec {
    Base::openapi()
}

/// The full OpenAPI description as pretty JSON (what the server serves).
pub fn openapi_json() -> String {
    let (_, spec) = utoipa_axum::router::OpenApiRouter::<crate::AppState>::with_openapi(base())
        .nest(tend_api::API_PREFIX, crate::routes::api())
        .split_for_parts();
    spec.to_pretty_json().unwrap_or_default()
}

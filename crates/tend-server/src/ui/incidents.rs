//! Incidents in the dashboard: the list with each one's context, and the
//! acknowledge/resolve buttons (owner team or admin, as in the API).

use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use tend_core::incident::{Incident, IncidentContext, IncidentFilter, IncidentState, OnCall};
use tend_core::TeamName;
use tend_store::Tx;

use super::{check_csrf, form, page, UiError, Viewer, S};
use crate::db::{audited, read};
use crate::error::ApiError;
use crate::routes::alerts::{change_incident, IncidentChange};

/// Open incidents of every team (the catalog and teams pages count them).
pub(super) fn open(tx: &Tx<'_>) -> Result<Vec<Incident>, ApiError> {
    Ok(tx.incidents(&IncidentFilter {
        teams: None,
        service: None,
        include_resolved: false,
        limit: 1000,
    })?)
}

/// A service's latest incidents, open or not.
pub(super) fn of_service(tx: &Tx<'_>, service: &str) -> Result<Vec<Incident>, ApiError> {
    Ok(tx.incidents(&IncidentFilter {
        teams: None,
        service: Some(service.to_string()),
        include_resolved: true,
        limit: 10,
    })?)
}

/// Who is on call for a team now, and next (as `GET /teams/{team}/oncall`).
pub(super) fn on_call(tx: &Tx<'_>, team: &TeamName) -> Result<OnCall, ApiError> {
    let rotation = tx.rotation(team)?;
    let overrides = tx.overrides(team)?;
    let policy = tx.escalation_policy(team)?;
    Ok(tend_core::incident::on_call(
        team,
        rotation.as_ref(),
        &overrides,
        policy,
        tx.now(),
    ))
}

/// Open incidents by service name.
pub(super) fn count_by_service(list: &[Incident]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in list {
        *m.entry(i.service.clone()).or_default() += 1;
    }
    m
}

/// An incident's state as a badge.
pub(super) fn state_badge(s: IncidentState) -> Markup {
    let class = match s {
        IncidentState::Triggered => "badge down",
        IncidentState::Acknowledged => "badge degraded",
        IncidentState::Resolved => "badge healthy",
    };
    html! { span class=(class) { (s.as_str()) } }
}

/// One line per incident, for the service and team pages.
pub(super) fn short_list(list: &[Incident]) -> Markup {
    html! {
        @if list.is_empty() { p class="muted" { "No incidents." } }
        ul class="incidents-short" {
            @for i in list {
                li {
                    a href=(format!("/ui/incidents?all=1#incident-{}", i.id)) { "#" (i.id) }
                    " " (state_badge(i.state)) " " (i.title)
                    span class="muted" { " · " (i.severity) " · opened " (i.opened_at.to_string()) }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListParams {
    team: Option<String>,
    all: Option<String>,
}

/// `GET /ui/incidents`: open incidents (or recent ones with `all=1`) with
/// what changed, error lines and alert values; ack and resolve buttons.
pub(super) async fn list(
    State(ui): S,
    viewer: Viewer,
    Query(p): Query<ListParams>,
) -> Result<Response, UiError> {
    let team = match p.team.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => Some(
            TeamName::parse(t)
                .map_err(|e| UiError::Api(ApiError::BadRequest(format!("team `{t}`: {e}"))))?,
        ),
        None => None,
    };
    let all = p.all.as_deref().is_some_and(|a| a == "1" || a == "true");
    let selected = team.as_ref().map(|t| t.to_string()).unwrap_or_default();
    let (list, teams) = read(&ui.app, move |tx| {
        let list = tx.incidents(&IncidentFilter {
            teams: team.map(|t| vec![t]),
            service: None,
            include_resolved: all,
            limit: 50,
        })?;
        let mut out: Vec<(Incident, Option<IncidentContext>)> = Vec::new();
        for i in list {
            // Context for the ones someone is working on; resolved ones are history.
            let ctx = if i.state != IncidentState::Resolved {
                Some(tx.incident_context(i.id)?)
            } else {
                None
            };
            out.push((i, ctx));
        }
        let teams: Vec<TeamName> = tx.teams()?.into_iter().map(|t| t.name).collect();
        Ok((out, teams))
    })
    .await?;
    let body = html! {
        div class="title" {
            h1 { "Incidents" }
            p class="muted" { (list.len()) @if all { " recent" } @else { " open" } " · newest first" }
        }
        form class="filters" method="get" action="/ui/incidents" {
            div {
                label for="team" { "Team" }
                select id="team" name="team" {
                    option value="" selected[selected.is_empty()] { "All teams" }
                    @for t in &teams { option value=(t.as_str()) selected[selected == t.as_str()] { (t.as_str()) } }
                }
            }
            div {
                label for="all" { "Show" }
                select id="all" name="all" {
                    option value="" selected[!all] { "open only" }
                    option value="1" selected[all] { "resolved too" }
                }
            }
            button type="submit" { "Filter" }
        }
        @if list.is_empty() { p class="card muted" { "No incidents. All quiet." } }
        @for (i, ctx) in &list {
            (card(&viewer, i, ctx.as_ref()))
        }
    };
    Ok(page("Incidents", Some(&viewer), body).into_response())
}

fn card(viewer: &Viewer, i: &Incident, ctx: Option<&IncidentContext>) -> Markup {
    let may_act = viewer.acts_for(&i.team);
    html! {
        article class="card incident" id=(format!("incident-{}", i.id)) aria-labelledby=(format!("h-incident-{}", i.id)) {
            h2 id=(format!("h-incident-{}", i.id)) {
                "#" (i.id) " " (i.title) " " (state_badge(i.state))
            }
            p class="muted" {
                a href=(format!("/ui/services/{}", i.service)) { (i.service) }
                " · team " a href=(format!("/ui/teams#team-{}", i.team)) { (i.team.as_str()) }
                " · " (i.severity) " · opened " (i.opened_at.to_string())
                @if let Some(by) = &i.acked_by { " · acknowledged by " (by) }
                @if let Some(at) = i.resolved_at {
                    " · resolved " (at.to_string())
                    @if let Some(by) = &i.resolved_by { " by " (by) }
                }
            }
            @if !i.alerts.is_empty() {
                h3 { "Alerts" }
                ul class="names" {
                    @for a in &i.alerts {
                        li {
                            strong { (a.name) } " = " code { (super::chart::format(a.value, super::chart::Unit::Plain)) }
                            " (" (a.status) ")"
                            @if let Some(s) = a.annotations.get("summary") { " — " (s) }
                        }
                    }
                }
            }
            @if let Some(ctx) = ctx {
                @if !ctx.changes.is_empty() {
                    h3 { "What changed before" }
                    ul class="names" {
                        @for e in &ctx.changes {
                            li { time datetime=(e.time.to_string()) { (e.time.to_string()) } " " strong { (e.kind) } " " (e.message) }
                        }
                    }
                }
                @if !ctx.error_logs.is_empty() {
                    h3 { "Recent error lines" }
                    pre class="errors" { @for l in &ctx.error_logs { (l) "\n" } }
                }
                p {
                    @if let Some(r) = &ctx.runbook { a href=(r) rel="noopener noreferrer" { "Runbook" } " · " }
                    "Roll back: " code { (ctx.rollback) }
                }
            }
            @if may_act && i.state != IncidentState::Resolved {
                div class="actions" {
                    @if i.state == IncidentState::Triggered {
                        form method="post" action=(format!("/ui/incidents/{}/ack", i.id)) {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" class="ack" { "Acknowledge" }
                        }
                    }
                    form method="post" action=(format!("/ui/incidents/{}/resolve", i.id)) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button type="submit" class="resolve" { "Resolve" }
                    }
                }
            }
        }
    }
}

/// `POST /ui/incidents/{id}/ack`.
pub(super) async fn ack(
    state: S,
    viewer: Viewer,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, UiError> {
    change(state, viewer, id, req, IncidentChange::Ack).await
}

/// `POST /ui/incidents/{id}/resolve`.
pub(super) async fn resolve(
    state: S,
    viewer: Viewer,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, UiError> {
    change(state, viewer, id, req, IncidentChange::Resolve).await
}

/// The API's ack/resolve ([`change_incident`]) behind the page's CSRF check.
async fn change(
    State(ui): S,
    viewer: Viewer,
    id: String,
    req: Request,
    what: IncidentChange,
) -> Result<Response, UiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| UiError::NotFound(format!("no incident `{id}`")))?;
    let fields = form(&super::pages::body_of(req).await?);
    if let Err(problem) = check_csrf(&viewer, &fields) {
        let action = match what {
            IncidentChange::Ack => "incident.ack",
            IncidentChange::Resolve => "incident.resolve",
        };
        let p = problem.clone();
        let _ = audited(
            &ui.app,
            &viewer.caller,
            action,
            format!("incident/{id}"),
            move |_, _| Err::<(), _>(ApiError::Forbidden(p)),
        )
        .await;
        return Err(UiError::Forbidden(problem));
    }
    change_incident(&ui.app, &viewer.caller, id, what)
        .await
        .map_err(|e| match e {
            ApiError::Forbidden(m) => UiError::Forbidden(m),
            other => UiError::Api(other),
        })?;
    Ok(Redirect::to(&format!("/ui/incidents?all=1#incident-{id}")).into_response())
}

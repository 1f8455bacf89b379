//! What the OpenAPI document promises beyond each handler's annotation: the
//! error statuses operations share (derived from what an operation takes, so
//! a new route cannot forget them) and the links that lead a client, or
//! schemathesis's stateful phase, from a create to the operations using its id.

use serde_json::{json, Map, Value};

/// A link from a create operation's response to an operation that uses an id from it.
struct LinkSpec {
    /// The operation whose response carries the id.
    from: &'static str,
    /// That response's status.
    status: &'static str,
    /// The operation the link leads to.
    to: &'static str,
    /// The target's parameters, as runtime expressions over the source's response or request.
    parameters: &'static [(&'static str, &'static str)],
}

const APP_ID: (&str, &str) = ("app_id", "$response.body#/id");
const SCRIPT_IDS: &[(&str, &str)] = &[
    ("app_id", "$response.body#/app_id"),
    ("script_id", "$response.body#/id"),
];

const TRIGGER_IDS: &[(&str, &str)] = &[
    ("app_id", "$response.body#/app_id"),
    ("trigger_id", "$response.body#/id"),
];

/// Dead letters are made by the dispatcher, not by an operation: the list leads to them.
const FIRST_DEAD_LETTER: &[(&str, &str)] = &[
    ("app_id", "$request.path.app_id"),
    ("id", "$response.body#/0/id"),
];

/// Every link in the document. A test checks that each operation with a path
/// parameter is the target of one that supplies all of them.
const LINKS: &[LinkSpec] = &[
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "get_app",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "delete_app",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "create_script",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "list_scripts",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "set_secret",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "list_secrets",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "create_trigger",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "list_triggers",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "list_dead_letters",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "outbox_stats",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "get_email_policy",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "get_email_inbound",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "put_email_inbound",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "receive_for_app",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "mint_token",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "rotate_key",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "subscribe",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "create_app",
        status: "201",
        to: "put_email_policy",
        parameters: &[APP_ID],
    },
    LinkSpec {
        from: "list_dead_letters",
        status: "200",
        to: "get_dead_letter",
        parameters: FIRST_DEAD_LETTER,
    },
    LinkSpec {
        from: "list_dead_letters",
        status: "200",
        to: "replay_dead_letter",
        parameters: FIRST_DEAD_LETTER,
    },
    LinkSpec {
        from: "list_dead_letters",
        status: "200",
        to: "delete_dead_letter",
        parameters: FIRST_DEAD_LETTER,
    },
    LinkSpec {
        from: "create_trigger",
        status: "201",
        to: "get_trigger",
        parameters: TRIGGER_IDS,
    },
    LinkSpec {
        from: "create_trigger",
        status: "201",
        to: "receive_for_trigger",
        parameters: &[("trigger_id", "$response.body#/id")],
    },
    LinkSpec {
        from: "create_trigger",
        status: "201",
        to: "delete_trigger",
        parameters: TRIGGER_IDS,
    },
    LinkSpec {
        from: "create_script",
        status: "201",
        to: "get_script",
        parameters: SCRIPT_IDS,
    },
    LinkSpec {
        from: "create_script",
        status: "201",
        to: "update_script",
        parameters: SCRIPT_IDS,
    },
    LinkSpec {
        from: "create_script",
        status: "201",
        to: "delete_script",
        parameters: SCRIPT_IDS,
    },
    LinkSpec {
        from: "create_script",
        status: "201",
        to: "invoke",
        parameters: &[
            ("app_id", "$response.body#/app_id"),
            ("script_name", "$response.body#/name"),
        ],
    },
    LinkSpec {
        from: "set_secret",
        status: "200",
        to: "delete_secret",
        parameters: &[
            ("app_id", "$request.path.app_id"),
            ("name", "$response.body#/name"),
        ],
    },
    LinkSpec {
        from: "create_key",
        status: "201",
        to: "delete_key",
        parameters: &[("id", "$response.body#/id")],
    },
];

/// The shared error responses, by status: (component name, description).
const SHARED_ERRORS: &[(&str, &str, &str)] = &[
    ("400", "BadRequest", "`bad_request`: a malformed path parameter (not a UUID, a control character) or a body that is not JSON"),
    ("401", "Unauthorized", "`unauthorized`: no API key, or not a valid one"),
    ("403", "Forbidden", "`forbidden`: the API key lacks the scope this operation needs"),
    ("404", "NotFound", "`not_found`: no such resource in this app"),
    ("413", "TooLarge", "`too_large`: the body is above `PICLOUD_MAX_REQUEST_BYTES` (or a field above its own limit); `limit` gives the bound"),
    ("422", "ValidationError", "`validation_error`: the body is JSON but breaks a rule (a missing field, a name out of its pattern)"),
    ("408", "RequestTimeout", "`request_timeout`: the body did not arrive within `PICLOUD_HTTP_BODY_TIMEOUT_SECS`"),
    ("503", "Unavailable", "`unavailable`: the server is busy (request bodies being read fill `PICLOUD_MAX_BODY_BUFFER_BYTES`, or every script worker is taken; retry after `Retry-After` seconds), the database is unavailable, or a concurrent change conflicted with this one (nothing was changed; retry)"),
];

/// Adds the shared error responses and the links to `doc`.
pub fn finish(doc: &mut Value) {
    add_shared_errors(doc);
    add_links(doc);
}

fn add_shared_errors(doc: &mut Value) {
    let responses: Map<String, Value> = SHARED_ERRORS
        .iter()
        .map(|(_, name, description)| {
            let response = json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            });
            ((*name).to_owned(), response)
        })
        .collect();
    doc["components"]["responses"] = Value::Object(responses);

    for operation in operations_mut(doc) {
        let has_path_params = operation["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["in"] == "path"));
        let has_body = operation.get("requestBody").is_some();
        // Typed bodies are validated (422); a free-form one (invoke's) is not.
        let has_typed_body = operation
            .pointer("/requestBody/content/application~1json/schema/$ref")
            .is_some();
        let needs_key = operation["security"]
            .as_array()
            .is_some_and(|reqs| reqs.iter().any(|r| r.get("bearer").is_some()));
        let applies = |status: &str| match status {
            "400" => has_path_params || has_body,
            "401" | "403" => needs_key,
            "404" => has_path_params,
            "413" | "408" => has_body,
            // Everything behind an API key reaches the database.
            "503" => has_body || needs_key,
            "422" => has_typed_body,
            _ => false,
        };
        let Some(list) = operation["responses"].as_object_mut() else {
            continue;
        };
        for (status, name, _) in SHARED_ERRORS {
            if applies(status) && !list.contains_key(*status) {
                list.insert(
                    (*status).to_owned(),
                    json!({"$ref": format!("#/components/responses/{name}")}),
                );
            }
        }
    }
}

fn add_links(doc: &mut Value) {
    for link in LINKS {
        let Some(operation) = operations_mut(doc)
            .into_iter()
            .find(|op| op["operationId"] == link.from)
        else {
            continue;
        };
        let parameters: Map<String, Value> = link
            .parameters
            .iter()
            .map(|(name, expr)| ((*name).to_owned(), Value::from(*expr)))
            .collect();
        let response = &mut operation["responses"][link.status];
        if response.is_object() {
            response["links"][link.to] = json!({"operationId": link.to, "parameters": parameters});
        }
    }
}

/// Every operation object of the document.
fn operations_mut(doc: &mut Value) -> Vec<&mut Value> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter(|op| op.get("responses").is_some())
        .collect()
}

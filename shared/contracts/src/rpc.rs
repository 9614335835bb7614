//! The request/reply envelope between the gateway and the services.
//!
//! The gateway stays generic: it turns an HTTP request into an [`RpcRequest`] whose body
//! is the JSON body transcoded to MessagePack, and turns an [`RpcReply`] back into JSON.
//! The owning service decodes the body into its typed request (from [`crate::api`]), so
//! field validation happens where the contract lives.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::Problem;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The authenticated user on whose behalf the gateway calls a service. The gateway
/// verified the access token; services trust this field because only the gateway may
/// publish on request subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user_id: Uuid,
    pub role: Role,
}

/// A request routed by the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest<B> {
    /// `None` for public routes (register, login).
    #[serde(default)]
    pub caller: Option<Caller>,
    /// Path parameters by name, e.g. `id`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Query parameters (the last value wins for repeated keys).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// The client's address as the gateway determined it: the connection's peer, or the
    /// `X-Forwarded-For` hop a trusted proxy reported (`GATEWAY_TRUSTED_PROXIES`). Auth
    /// limits failed logins per address with it; absent when the caller is not the
    /// gateway (tests, tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    pub body: B,
}

impl<B> RpcRequest<B> {
    pub fn new(body: B) -> Self {
        RpcRequest {
            caller: None,
            params: BTreeMap::new(),
            query: BTreeMap::new(),
            client_ip: None,
            body,
        }
    }

    pub fn with_caller(mut self, caller: Caller) -> Self {
        self.caller = Some(caller);
        self
    }

    pub fn with_param(mut self, name: &str, value: impl Into<String>) -> Self {
        self.params.insert(name.to_owned(), value.into());
        self
    }

    pub fn with_query(mut self, name: &str, value: impl Into<String>) -> Self {
        self.query.insert(name.to_owned(), value.into());
        self
    }

    pub fn with_client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }
}

/// The body of a request that carries none (GET, DELETE). Accepts anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoBody {}

/// A service's answer: a success with its HTTP status, or a problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcReply<T> {
    Ok { status: u16, body: T },
    Err(Problem),
}

impl<T> RpcReply<T> {
    pub fn ok(body: T) -> Self {
        RpcReply::Ok { status: 200, body }
    }

    pub fn created(body: T) -> Self {
        RpcReply::Ok { status: 201, body }
    }

    pub fn into_result(self) -> Result<T, Problem> {
        match self {
            RpcReply::Ok { body, .. } => Ok(body),
            RpcReply::Err(p) => Err(p),
        }
    }
}

impl<T> From<Result<T, Problem>> for RpcReply<T> {
    fn from(r: Result<T, Problem>) -> Self {
        match r {
            Ok(body) => RpcReply::ok(body),
            Err(p) => RpcReply::Err(p),
        }
    }
}

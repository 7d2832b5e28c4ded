//! `COMPAT_*` → [`crate::CompatConfig`]: which foreign Redis formats are read, and how
//! their messages are mapped.

use super::{CompatArgs, ConfigError, invalid};

/// `COMPAT_*`: which foreign formats are read, and how their messages are mapped.
pub(super) fn compat_config(
    args: &CompatArgs,
    require_tenant: bool,
    redis: bool,
    cluster: bool,
    legacy_channel: Option<&str>,
) -> Result<Option<crate::CompatConfig>, ConfigError> {
    let (mut python, mut node) = (false, false);
    for source in args.sources.iter().map(|s| s.trim()) {
        match source {
            "python" => python = true,
            "node" => node = true,
            "" => {}
            other => {
                return Err(invalid(
                    "COMPAT_SOURCES",
                    format!("unknown source {other:?} (python, node)"),
                ));
            }
        }
    }
    if args.node_outbound && !node {
        return Err(invalid(
            "COMPAT_NODE_OUTBOUND",
            "needs `node` in COMPAT_SOURCES",
        ));
    }
    if !python && !node {
        return Ok(None);
    }
    if !redis && !cluster {
        return Err(invalid(
            "COMPAT_SOURCES",
            "the other servers publish on Redis: set REDIS_URL",
        ));
    }
    if node && cluster {
        return Err(invalid(
            "COMPAT_SOURCES",
            "`node` is not supported with REDIS_CLUSTER_NODES yet (the Node adapter's classic channels): use REDIS_URL, or only `python`",
        ));
    }
    let name = |var: &'static str, value: &str| -> Result<String, ConfigError> {
        let value = value.trim();
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(var, "must be non-empty without spaces"));
        }
        Ok(value.to_owned())
    };
    let mut python_channels = Vec::new();
    if python {
        for channel in &args.python_channels {
            let channel = name("COMPAT_PYTHON_CHANNELS", channel)?;
            if Some(channel.as_str()) == legacy_channel {
                return Err(invalid(
                    "COMPAT_PYTHON_CHANNELS",
                    format!("{channel} is LEGACY_CHANNEL too"),
                ));
            }
            if !python_channels.contains(&channel) {
                python_channels.push(channel);
            }
        }
        if python_channels.is_empty() {
            return Err(invalid(
                "COMPAT_PYTHON_CHANNELS",
                "name at least one channel",
            ));
        }
    }
    let tenant = match args.tenant.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => {
            Some(rooms::TenantId::parse(t).map_err(|e| invalid("COMPAT_TENANT", e.to_string()))?)
        }
    };
    if require_tenant && tenant.is_none() {
        return Err(invalid(
            "COMPAT_TENANT",
            "REQUIRE_TENANT is on: name the tenant other servers' messages are delivered in",
        ));
    }
    let kind = args.room_kind.trim();
    let room_kind = if kind.is_empty() {
        None
    } else {
        rooms::Room::new(kind, "x").map_err(|e| invalid("COMPAT_ROOM_KIND", e.to_string()))?;
        Some(kind.to_owned())
    };
    Ok(Some(crate::CompatConfig {
        python_channels,
        node_key: node
            .then(|| name("COMPAT_NODE_KEY", &args.node_key))
            .transpose()?,
        node_outbound: args.node_outbound,
        tenant,
        room_kind,
    }))
}

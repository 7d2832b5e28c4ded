//! The broadcast format of Node's `@socket.io/redis-adapter` and
//! `@socket.io/redis-emitter`: a MessagePack array `[uid, packet, opts]` published on
//! `{key}#{nsp}#` (several rooms, or the whole namespace) or `{key}#{nsp}#{room}#` (one
//! room), where `packet` is `{type, data: [event, ...args], nsp}` and `opts` is
//! `{rooms, except, flags}`. Binary arguments are MessagePack byte strings.

use bytes::Bytes;
use rmpv::Value as Mp;
use serde_json::Value;

use super::{CompatError, Decoded, Foreign, MAX_DEPTH, Tree};

/// Socket.IO packet types that carry an event.
const EVENT: u64 = 2;
const BINARY_EVENT: u64 = 5;

/// Decodes one broadcast. `own_prefix`: the uid prefix of what Roomcast itself
/// publishes in this format, which is [`Decoded::Own`].
pub(crate) fn decode(payload: &[u8], own_prefix: &str) -> Result<Decoded, CompatError> {
    let value = rmpv::decode::read_value_with_max_depth(&mut &payload[..], MAX_DEPTH)
        .map_err(|e| CompatError::Malformed(format!("MessagePack: {e}")))?;
    let Mp::Array(mut parts) = value else {
        return Err(CompatError::Malformed(
            "not a [uid, packet, opts] array".into(),
        ));
    };
    if parts.len() < 3 {
        return Err(CompatError::Malformed(
            "not a [uid, packet, opts] array".into(),
        ));
    }
    let opts = parts.swap_remove(2);
    let packet = parts.swap_remove(1);
    if parts[0]
        .as_str()
        .is_some_and(|uid| uid.starts_with(own_prefix))
    {
        return Ok(Decoded::Own);
    }
    let packet_type = field(&packet, "type").and_then(Mp::as_u64);
    if !matches!(packet_type, Some(EVENT | BINARY_EVENT)) {
        return Err(CompatError::Unsupported(format!(
            "packet type {packet_type:?} (only events are broadcast)"
        )));
    }
    let ns = match field(&packet, "nsp") {
        None | Some(Mp::Nil) => "/".to_owned(),
        Some(v) => v
            .as_str()
            .filter(|n| n.starts_with('/'))
            .ok_or_else(|| CompatError::Malformed("nsp is not a namespace".into()))?
            .to_owned(),
    };
    // Taken, not copied: the arguments are the bulk of the message.
    let data = match packet {
        Mp::Map(entries) => entries
            .into_iter()
            .find(|(k, _)| k.as_str() == Some("data"))
            .map(|(_, v)| v),
        _ => None,
    };
    let Some(Mp::Array(data)) = data else {
        return Err(CompatError::Malformed("packet data is not a list".into()));
    };
    let mut data = data.into_iter();
    let event = data
        .next()
        .and_then(|e| e.as_str().map(str::to_owned))
        .filter(|e| !e.is_empty())
        .ok_or_else(|| CompatError::Malformed("no event name".into()))?;
    let mut attachments = Vec::new();
    let args = data
        .map(|a| tree_of(a, 0).map(|t| t.into_json(&mut attachments)))
        .collect::<Result<Vec<_>, _>>()?;
    let flags = field(&opts, "flags");
    let flag = |name: &str| flags.and_then(|f| field(f, name)).and_then(Mp::as_bool) == Some(true);
    if flag("local") {
        return Ok(Decoded::Ignored("local"));
    }
    let rooms = names(field(&opts, "rooms"))?;
    Ok(Decoded::Emit(Foreign {
        ns,
        event,
        args,
        attachments,
        rooms: (!rooms.is_empty()).then_some(rooms),
        except: names(field(&opts, "except"))?,
        volatile: flag("volatile"),
    }))
}

/// The value under `key` of a MessagePack map.
fn field<'a>(map: &'a Mp, key: &str) -> Option<&'a Mp> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Room names (Node allows numbers too).
fn names(value: Option<&Mp>) -> Result<Vec<String>, CompatError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Mp::Array(items) = value else {
        return Err(CompatError::Malformed("rooms is not a list".into()));
    };
    items
        .iter()
        .map(|r| match r {
            Mp::String(s) => s
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| CompatError::Malformed("a room is not UTF-8".into())),
            Mp::Integer(i) => Ok(i.to_string()),
            _ => Err(CompatError::Malformed("a room is not a string".into())),
        })
        .collect()
}

/// A MessagePack value as plain data.
fn tree_of(value: Mp, depth: usize) -> Result<Tree, CompatError> {
    if depth > MAX_DEPTH {
        return Err(CompatError::Malformed("nested too deep".into()));
    }
    Ok(match value {
        Mp::Nil => Tree::Null,
        Mp::Boolean(b) => Tree::Json(Value::Bool(b)),
        Mp::Integer(i) => Tree::Json(
            i.as_i64()
                .map(Value::from)
                .or_else(|| i.as_u64().map(Value::from))
                .unwrap_or(Value::Null),
        ),
        Mp::F32(f) => Tree::Json(number(f64::from(f))),
        Mp::F64(f) => Tree::Json(number(f)),
        Mp::String(s) => {
            Tree::Json(Value::String(s.into_str().ok_or_else(|| {
                CompatError::Malformed("a string is not UTF-8".into())
            })?))
        }
        Mp::Binary(b) => Tree::Bytes(Bytes::from(b)),
        Mp::Array(items) => Tree::List(
            items
                .into_iter()
                .map(|i| tree_of(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Mp::Map(entries) => Tree::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Mp::String(s) => s.into_str(),
                        Mp::Integer(i) => Some(i.to_string()),
                        _ => None,
                    }
                    .ok_or_else(|| CompatError::Malformed("a map key is not a string".into()))?;
                    Ok((key, tree_of(v, depth + 1)?))
                })
                .collect::<Result<_, CompatError>>()?,
        ),
        Mp::Ext(kind, _) => {
            return Err(CompatError::Unsupported(format!(
                "MessagePack extension type {kind}"
            )));
        }
    })
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// `message` as a broadcast by `uid` under `key`: the channel to publish on and the
/// payload. Placeholders in its arguments become the attachments' bytes.
pub(crate) fn encode(
    key: &str,
    uid: &str,
    message: &Foreign,
) -> Result<(String, Vec<u8>), CompatError> {
    let mut data = vec![Mp::from(message.event.as_str())];
    data.extend(message.args.iter().map(|a| to_mp(a, &message.attachments)));
    let packet = Mp::Map(vec![
        (Mp::from("type"), Mp::from(EVENT)),
        (Mp::from("data"), Mp::Array(data)),
        (Mp::from("nsp"), Mp::from(message.ns.as_str())),
    ]);
    let rooms = message.rooms.as_deref().unwrap_or_default();
    let list = |names: &[String]| Mp::Array(names.iter().map(|n| Mp::from(n.as_str())).collect());
    let mut flags = Vec::new();
    if message.volatile {
        flags.push((Mp::from("volatile"), Mp::from(true)));
    }
    let opts = Mp::Map(vec![
        (Mp::from("rooms"), list(rooms)),
        (Mp::from("except"), list(&message.except)),
        (Mp::from("flags"), Mp::Map(flags)),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Mp::Array(vec![Mp::from(uid), packet, opts]))
        .map_err(|e| CompatError::Malformed(format!("MessagePack: {e}")))?;
    let ns = &message.ns;
    let channel = match rooms {
        [one] => format!("{key}#{ns}#{one}#"),
        _ => format!("{key}#{ns}#"),
    };
    Ok((channel, out))
}

/// A JSON argument as MessagePack, with Socket.IO placeholders replaced by their bytes.
fn to_mp(value: &Value, attachments: &[Bytes]) -> Mp {
    if let Some(n) = envelope::placeholder_index(value)
        && let Some(bytes) = attachments.get(n)
    {
        return Mp::Binary(bytes.to_vec());
    }
    match value {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::from(*b),
        Value::Number(n) => n
            .as_i64()
            .map(Mp::from)
            .or_else(|| n.as_u64().map(Mp::from))
            .or_else(|| n.as_f64().map(Mp::from))
            .unwrap_or(Mp::Nil),
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(items) => Mp::Array(items.iter().map(|i| to_mp(i, attachments)).collect()),
        Value::Object(map) => Mp::Map(
            map.iter()
                .map(|(k, v)| (Mp::from(k.as_str()), to_mp(v, attachments)))
                .collect(),
        ),
    }
}

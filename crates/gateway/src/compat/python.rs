//! python-socketio's message queue format (`RedisManager`, `AsyncRedisManager`,
//! Flask-SocketIO's `message_queue`): one dict per message on one channel, written as
//! JSON by python-socketio 5.14 and later and with `pickle` by 5.13 and earlier.
//!
//! Pickles are decoded as plain data only (`serde-pickle`, which constructs nothing and
//! refuses any pickle that names a class or function).

use bytes::Bytes;
use serde_json::{Map, Value};
use serde_pickle::{HashableValue, Value as Py};

use super::{CompatError, Decoded, Foreign, MAX_DEPTH, Tree};

/// Decodes one message of the python-socketio channel.
pub(crate) fn decode(payload: &[u8]) -> Result<Decoded, CompatError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let Value::Object(map) = serde_json::from_slice::<Value>(payload)
            .map_err(|e| CompatError::Malformed(format!("JSON: {e}")))?
        else {
            return Err(CompatError::Malformed("not a JSON object".into()));
        };
        return from_json(map);
    }
    decode_pickle(payload)
}

/// Stack a pickle may need per byte: a pickle nests at most one level per byte (TUPLE1),
/// and decoding it, converting it and dropping it recurse once per level (over 1 KiB
/// per level in a debug build). Reserved, not touched, beyond what the nesting uses.
const STACK_PER_BYTE: usize = 4096;

/// Decodes a pickled message on a thread whose stack is sized for the payload, so that
/// no nesting that fits in the size limit can exhaust a runtime worker's stack; deeper
/// than [`MAX_DEPTH`] is refused after decoding.
fn decode_pickle(payload: &[u8]) -> Result<Decoded, CompatError> {
    let stack = (1 << 20) + payload.len().saturating_mul(STACK_PER_BYTE);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pickle".into())
            .stack_size(stack)
            .spawn_scoped(scope, || pickle_message(payload))
            .map_err(|e| CompatError::Unsupported(format!("no thread to decode a pickle: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(CompatError::Malformed("the pickle decoder failed".into())))
    })
}

/// A pickled message: a dict of plain data.
fn pickle_message(payload: &[u8]) -> Result<Decoded, CompatError> {
    let value = serde_pickle::value_from_slice(payload, serde_pickle::DeOptions::new()).map_err(
        |e| match e {
            serde_pickle::Error::Syntax(serde_pickle::ErrorCode::UnresolvedGlobal) => {
                CompatError::Unsafe("the pickle names a class or function".into())
            }
            other => CompatError::Malformed(format!("neither JSON nor a data pickle: {other}")),
        },
    )?;
    let Py::Dict(dict) = value else {
        return Err(CompatError::Malformed("the pickle is not a dict".into()));
    };
    from_pickle(dict)
}

/// python-socketio 5.14+: `data` is the list of arguments; with `binary`, its first
/// item is that list with Socket.IO placeholders and the rest are the attachments in
/// base64.
fn from_json(mut map: Map<String, Value>) -> Result<Decoded, CompatError> {
    let method = map
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if method != "emit" {
        return Ok(Decoded::Ignored(method_label(method)));
    }
    let event = string_field(map.get("event"), "event")?;
    let ns = namespace(map.get("namespace"))?;
    let rooms = rooms_of(map.get("room"))?;
    let binary = map.get("binary").and_then(Value::as_bool).unwrap_or(false);
    let data = map.remove("data").unwrap_or(Value::Null);
    let (args, attachments) = if binary {
        let Value::Array(mut parts) = data else {
            return Err(CompatError::Malformed("binary data is not a list".into()));
        };
        if parts.is_empty() {
            return Err(CompatError::Malformed("binary data is empty".into()));
        }
        let attachments = parts
            .drain(1..)
            .map(|p| {
                use base64::Engine as _;
                p.as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .map(Bytes::from)
                    .ok_or_else(|| CompatError::Malformed("an attachment is not base64".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        (arguments(parts.swap_remove(0))?, attachments)
    } else {
        (arguments(data)?, Vec::new())
    };
    Ok(Decoded::Emit(Foreign {
        ns,
        event,
        args,
        attachments,
        rooms,
        except: Vec::new(),
        volatile: false,
    }))
}

/// The arguments of a 5.14+ message: always a list.
fn arguments(data: Value) -> Result<Vec<Value>, CompatError> {
    match data {
        Value::Array(args) => Ok(args),
        _ => Err(CompatError::Malformed("data is not a list".into())),
    }
}

/// python-socketio 5.13 and earlier: `data` is the one argument, or a tuple of several;
/// binary values are `bytes` inside it.
fn from_pickle(
    dict: std::collections::BTreeMap<HashableValue, Py>,
) -> Result<Decoded, CompatError> {
    let mut fields: std::collections::HashMap<String, Py> = dict
        .into_iter()
        .filter_map(|(k, v)| match k {
            HashableValue::String(k) => Some((k, v)),
            _ => None,
        })
        .collect();
    let method = match fields.get("method") {
        Some(Py::String(m)) => m.clone(),
        _ => String::new(),
    };
    if method != "emit" {
        return Ok(Decoded::Ignored(method_label(&method)));
    }
    let mut tree = |key: &str| {
        fields
            .remove(key)
            .map(|v| tree_of(v, 0))
            .transpose()
            .map(|t| t.unwrap_or(Tree::Null))
    };
    let event = tree("event")?;
    let ns = tree("namespace")?;
    let room = tree("room")?;
    let data = tree("data")?;
    let args = match data {
        Tree::Tuple(items) => items,
        one => vec![one],
    };
    let mut attachments = Vec::new();
    let args = args
        .into_iter()
        .map(|a| a.into_json(&mut attachments))
        .collect();
    let mut none = Vec::new();
    Ok(Decoded::Emit(Foreign {
        ns: namespace(Some(&ns.into_json(&mut none)))?,
        event: string_field(Some(&event.into_json(&mut none)), "event")?,
        args,
        attachments,
        rooms: rooms_of(Some(&room.into_json(&mut none)))?,
        except: Vec::new(),
        volatile: false,
    }))
}

/// A pickled value as plain data.
fn tree_of(value: Py, depth: usize) -> Result<Tree, CompatError> {
    if depth > MAX_DEPTH {
        return Err(CompatError::Malformed("nested too deep".into()));
    }
    let all = |items: Vec<Py>| {
        items
            .into_iter()
            .map(|i| tree_of(i, depth + 1))
            .collect::<Result<Vec<_>, _>>()
    };
    let set = |items: std::collections::BTreeSet<HashableValue>| {
        all(items.into_iter().map(HashableValue::into_value).collect())
    };
    Ok(match value {
        Py::None => Tree::Null,
        Py::Bool(b) => Tree::Json(Value::Bool(b)),
        Py::I64(i) => Tree::Json(Value::from(i)),
        Py::Int(big) => Tree::Json(
            big.to_string()
                .parse::<serde_json::Number>()
                .map_or(Value::Null, Value::Number),
        ),
        Py::F64(f) => {
            Tree::Json(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
        }
        Py::Bytes(b) => Tree::Bytes(Bytes::from(b)),
        Py::String(s) => Tree::Json(Value::String(s)),
        Py::List(items) => Tree::List(all(items)?),
        Py::Tuple(items) => Tree::Tuple(all(items)?),
        Py::Set(items) | Py::FrozenSet(items) => Tree::List(set(items)?),
        Py::Dict(map) => Tree::Map(
            map.into_iter()
                .map(|(k, v)| Ok((key_of(k)?, tree_of(v, depth + 1)?)))
                .collect::<Result<_, CompatError>>()?,
        ),
    })
}

/// A dict key as JSON writes it (`json.dumps` turns numbers and booleans into strings).
fn key_of(key: HashableValue) -> Result<String, CompatError> {
    Ok(match key {
        HashableValue::String(s) => s,
        HashableValue::I64(i) => i.to_string(),
        HashableValue::Int(i) => i.to_string(),
        HashableValue::Bool(b) => b.to_string(),
        HashableValue::None => "null".to_owned(),
        HashableValue::F64(f) => f.to_string(),
        _ => {
            return Err(CompatError::Malformed(
                "a dict key is not a string or number".into(),
            ));
        }
    })
}

/// A required string field.
fn string_field(value: Option<&Value>, name: &str) -> Result<String, CompatError> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(CompatError::Malformed(format!("no {name}"))),
    }
}

/// The namespace: `/` when absent.
fn namespace(value: Option<&Value>) -> Result<String, CompatError> {
    match value {
        None | Some(Value::Null) => Ok("/".to_owned()),
        Some(Value::String(s)) if s.starts_with('/') => Ok(s.clone()),
        Some(other) => Err(CompatError::Malformed(format!("namespace {other}"))),
    }
}

/// `room`: absent or `None` for the whole namespace (`None` here), one room, or several.
fn rooms_of(value: Option<&Value>) -> Result<Option<Vec<String>>, CompatError> {
    let name = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(CompatError::Malformed(format!("room {other}"))),
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(rooms)) => rooms.iter().map(name).collect::<Result<_, _>>().map(Some),
        Some(one) => Ok(Some(vec![name(one)?])),
    }
}

/// The label under which a method other than `emit` is counted.
fn method_label(method: &str) -> &'static str {
    match method {
        "callback" => "callback",
        "enter_room" => "enter_room",
        "leave_room" => "leave_room",
        "close_room" => "close_room",
        "disconnect" => "disconnect",
        _ => "unknown_method",
    }
}

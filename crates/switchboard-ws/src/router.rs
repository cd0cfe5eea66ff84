//! Routes by request path: exact paths, `{name}` parameters and a trailing
//! `{*name}` wildcard.
//!
//! An exact route wins over a pattern; among patterns, the one with a
//! literal segment where another has a parameter (and a parameter where
//! another has the wildcard), at the first segment where they differ,
//! wins. Two patterns that would match the same paths are refused when
//! the transport is built, so the order of `route` calls never matters.
//!
//! A path is routed after escapes of unreserved characters are decoded
//! (RFC 3986 6.2.2.2: `/rooms/%6Cobby` is `/rooms/lobby`, and finds that
//! exact route); other escapes (`%2F`, `%20`) stay as they are for
//! matching and are decoded in the parameters' values.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};

/// A route's parameters: `(name, percent-decoded value)`, in the route's
/// order.
pub(crate) type Params = Vec<(Box<str>, Box<str>)>;

/// What a route maps to, with the parameters a request's path gave it.
pub(crate) struct Found<'a, T> {
    pub(crate) value: &'a T,
    pub(crate) params: Params,
}

/// A request path that matched a pattern but whose parameter is not UTF-8
/// once percent-decoded.
#[derive(Debug)]
pub(crate) struct BadParam;

pub(crate) struct Router<T> {
    exact: HashMap<Box<str>, T>,
    /// Most specific first (see the module docs).
    patterns: Vec<Pattern<T>>,
}

struct Pattern<T> {
    route: Box<str>,
    segments: Box<[Segment]>,
    value: T,
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param(Box<str>),
    /// The rest of the path: one or more segments.
    Rest(Box<str>),
}

impl Segment {
    /// How specific a segment is: lower wins.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param(_) => 1,
            Segment::Rest(_) => 2,
        }
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            exact: HashMap::new(),
            patterns: Vec::new(),
        }
    }
}

impl<T> Router<T> {
    /// Builds the router, refusing invalid routes and routes that would
    /// match the same paths.
    pub(crate) fn new(routes: Vec<(String, T)>) -> Result<Self> {
        let mut router = Router::default();
        for (route, value) in routes {
            if !route.starts_with('/')
                || route.contains(['?', '#'])
                || route.contains(char::is_whitespace)
            {
                return Err(Error::InvalidPath(route));
            }
            if !route.contains(['{', '}']) {
                if router.exact.contains_key(route.as_str()) {
                    return Err(Error::DuplicateRoute(route));
                }
                router.exact.insert(route.into_boxed_str(), value);
                continue;
            }
            let segments = parse(&route)?;
            if let Some(other) = router
                .patterns
                .iter()
                .find(|p| same_paths(&p.segments, &segments))
            {
                return Err(Error::OverlappingRoutes(other.route.to_string(), route));
            }
            router.patterns.push(Pattern {
                route: route.into_boxed_str(),
                segments,
                value,
            });
        }
        router
            .patterns
            .sort_by(|a, b| specificity(&a.segments, &b.segments));
        Ok(router)
    }

    /// Every route, exact ones first.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &str> {
        let patterns = self.patterns.iter().map(|p| &*p.route);
        self.exact.keys().map(|r| &**r).chain(patterns)
    }

    /// The route for `path` (as the request spelled it, without the
    /// query), if any.
    pub(crate) fn find(&self, path: &str) -> Result<Option<Found<'_, T>>, BadParam> {
        let path = normalize(path);
        let path = &*path;
        if let Some(value) = self.exact.get(path) {
            return Ok(Some(Found {
                value,
                params: Vec::new(),
            }));
        }
        // Most transports have no pattern (pages rarely do): no split then.
        let Some(rest) = path.strip_prefix('/').filter(|_| !self.patterns.is_empty()) else {
            return Ok(None);
        };
        let parts: Vec<&str> = rest.split('/').collect();
        for pattern in &self.patterns {
            if let Some(raw) = matches(&pattern.segments, &parts, rest) {
                let params = raw
                    .into_iter()
                    .map(|(name, value)| Ok((name.into(), decode(value)?)))
                    .collect::<Result<_, BadParam>>()?;
                return Ok(Some(Found {
                    value: &pattern.value,
                    params,
                }));
            }
        }
        Ok(None)
    }
}

/// Splits a route into segments, checking its braces and names.
fn parse(route: &str) -> Result<Box<[Segment]>> {
    let invalid = |reason| Error::InvalidRoute {
        route: route.to_owned(),
        reason,
    };
    let parts: Vec<&str> = route[1..].split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(inner) => {
                let (name, rest) = match inner.strip_prefix('*') {
                    Some(name) => (name, true),
                    None => (inner, false),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(invalid("a parameter's name is letters, digits and '_'"));
                }
                if rest && i + 1 != parts.len() {
                    return Err(invalid("a {*wildcard} can only be the last segment"));
                }
                if rest {
                    Segment::Rest(name.into())
                } else {
                    Segment::Param(name.into())
                }
            }
            None if part.contains(['{', '}']) => {
                return Err(invalid("a parameter takes a whole segment: /{name}/"));
            }
            None => Segment::Literal((*part).into()),
        };
        segments.push(segment);
    }
    let mut names: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) | Segment::Rest(n) => Some(&**n),
            Segment::Literal(_) => None,
        })
        .collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("two parameters with the same name"));
    }
    Ok(segments.into())
}

/// Whether two patterns match exactly the same paths.
fn same_paths(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            _ => x.rank() == y.rank(),
        })
}

/// The order in which patterns are tried: the more specific first.
fn specificity(a: &[Segment], b: &[Segment]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.rank().cmp(&y.rank()) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    // The same kinds as far as the shorter goes: no path matches both (a
    // wildcard is always last, so the lengths differ), and any order will
    // do; the longer first keeps it total.
    b.len().cmp(&a.len())
}

/// The raw parameters if `parts` (the path's segments) match the pattern.
/// `rest` is the whole path after its first `/`, which the wildcard takes
/// the end of.
fn matches<'p>(
    segments: &'p [Segment],
    parts: &[&'p str],
    rest: &'p str,
) -> Option<Vec<(&'p str, &'p str)>> {
    let mut params = Vec::new();
    let mut offset = 0;
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Rest(name) => {
                // Nothing after the prefix (`/files` or `/files/`): no match.
                if i >= parts.len() || rest[offset..].is_empty() {
                    return None;
                }
                params.push((&**name, &rest[offset..]));
                return Some(params);
            }
            _ if i >= parts.len() => return None,
            Segment::Literal(literal) if **literal != *parts[i] => return None,
            Segment::Literal(_) => {}
            Segment::Param(name) => {
                if parts[i].is_empty() {
                    return None;
                }
                params.push((&**name, parts[i]));
            }
        }
        offset += parts[i].len() + 1;
    }
    (segments.len() == parts.len()).then_some(params)
}

/// Decodes the escapes of unreserved characters (letters, digits, `-`,
/// `.`, `_`, `~`), which mean the same decoded or not; leaves the others.
fn normalize(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let unreserved_at = |i: usize| {
        let hex = bytes.get(i + 1..i + 3)?;
        let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        (byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)).then_some(byte)
    };
    if !(0..bytes.len()).any(|i| bytes[i] == b'%' && unreserved_at(i).is_some()) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], unreserved_at(i)) {
            (b'%', Some(byte)) => {
                out.push(char::from(byte));
                i += 3;
            }
            _ => {
                let len = path[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&path[i..i + len]);
                i += len;
            }
        }
    }
    Cow::Owned(out)
}

/// Percent-decodes a parameter; `+` stays itself, as in any path.
fn decode(raw: &str) -> Result<Box<str>, BadParam> {
    match percent_decode_str(raw).decode_utf8() {
        Ok(value) => Ok(value.into()),
        Err(_) => Err(BadParam),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[&'static str]) -> Router<&'static str> {
        Router::new(routes.iter().map(|r| (r.to_string(), *r)).collect()).expect("valid")
    }

    /// The route a path finds and its parameters, as one string.
    fn find(router: &Router<&'static str>, path: &str) -> String {
        match router.find(path) {
            Ok(Some(found)) => {
                let params: Vec<String> = found
                    .params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("{} {}", found.value, params.join(" "))
                    .trim_end()
                    .to_owned()
            }
            Ok(None) => "none".into(),
            Err(BadParam) => "bad".into(),
        }
    }

    #[test]
    fn paths_find_the_most_specific_route_whatever_the_order() {
        let routes = [
            "/rooms/{room}",
            "/files/{*path}",
            "/rooms/lobby",
            "/rooms/{room}/members",
            "/{section}/members",
            "/files/{dir}/index",
        ];
        let mut reversed = routes;
        reversed.reverse();
        for router in [router(&routes), router(&reversed)] {
            let cases = [
                ("/rooms/lobby", "/rooms/lobby"),
                ("/rooms/news", "/rooms/{room} room=news"),
                ("/rooms/a%20b%2Fc", "/rooms/{room} room=a b/c"),
                ("/rooms/a+b", "/rooms/{room} room=a+b"),
                ("/rooms/%C3%BC", "/rooms/{room} room=ü"),
                ("/rooms/%FF", "bad"),
                ("/rooms/", "none"),
                ("/rooms", "none"),
                ("/rooms/news/", "none"),
                ("/rooms/news/members", "/rooms/{room}/members room=news"),
                ("/teams/members", "/{section}/members section=teams"),
                ("/files/a/index", "/files/{dir}/index dir=a"),
                ("/files/a/b/index", "/files/{*path} path=a/b/index"),
                ("/files/x", "/files/{*path} path=x"),
                ("/files/", "none"),
                ("/files", "none"),
                // Values are the client's: slashes, dots and NUL included.
                ("/files//etc/passwd", "/files/{*path} path=/etc/passwd"),
                ("/files/..%2F..", "/files/{*path} path=../.."),
                ("/rooms/%00", "/rooms/{room} room=\0"),
                // Escaped unreserved characters are the characters.
                ("/rooms/%6Cobby", "/rooms/lobby"),
                ("/r%6Foms/x/%6Dembers", "/rooms/{room}/members room=x"),
                ("/rooms/%2e%2E", "/rooms/{room} room=.."),
                ("/rooms/%zz%4", "/rooms/{room} room=%zz%4"),
                ("/other", "none"),
                ("", "none"),
            ];
            for (path, expected) in cases {
                assert_eq!(find(&router, path), expected, "{path}");
            }
        }
    }

    #[test]
    fn invalid_and_overlapping_routes_are_refused() {
        let refused = |routes: &[&str]| {
            let routes = routes.iter().map(|r| (r.to_string(), ())).collect();
            match Router::new(routes) {
                Err(err) => err.to_string(),
                Ok(_) => "accepted".into(),
            }
        };
        let cases = [
            (
                &["/a/{x}", "/a/{y}"][..],
                r#""/a/{x}" and "/a/{y}" match the same paths"#,
            ),
            (&["/a", "/a"], "routed twice"),
            (&["/a/{*x}", "/a/{*y}"], "match the same paths"),
            (&["/a/{}"], "letters, digits"),
            (&["/a/{x-y}"], "letters, digits"),
            (&["/a/{*x}/b"], "last segment"),
            (&["/a/x{y}"], "whole segment"),
            (&["/a/{x"], "whole segment"),
            (&["/a/{x}/{x}"], "same name"),
            (&["rooms/{x}"], "invalid path"),
            (&["/a/{x}?q"], "invalid path"),
        ];
        for (routes, expected) in cases {
            let said = refused(routes);
            assert!(said.contains(expected), "{routes:?}: {said}");
        }
        // Same shape, different literals: both stay.
        let router = router(&["/a/{x}", "/b/{x}", "/{x}/a"]);
        assert_eq!(find(&router, "/b/1"), "/b/{x} x=1");
    }
}

//! Typed per-connection state.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;

/// A map from type to value, one value per type, like `http::Extensions`.
/// Empty until first used, so it costs one pointer per idle connection.
///
/// Each connection has one, behind [`Connection::insert_extension`](crate::Connection::insert_extension)
/// and its siblings: the WebSocket handshake hook fills it
/// (`Accept::new().with(user)`), a handler may add to it, and every later
/// handler reads it. Define a type
/// of your own for each value, so that two libraries cannot collide.
///
/// ```
/// use switchboard::{BoxError, Connection, Extensions, Message, MessageComponent};
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct User(String);
///
/// struct Greeter;
///
/// impl MessageComponent for Greeter {
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         if let Some(name) = msg.as_text().and_then(|t| t.strip_prefix("i am ")) {
///             conn.insert_extension(User(name.to_owned()));
///         }
///         match conn.extension::<User>() {
///             Some(User(name)) => conn.send(format!("hello, {name}"))?,
///             None => conn.send("who are you?")?,
///         }
///         Ok(())
///     }
/// }
///
/// let mut map = Extensions::default();
/// assert!(map.get::<User>().is_none());
/// assert!(map.insert(User("ann".into())).is_none());
/// // One value per type: inserting again hands back the old one.
/// assert_eq!(map.insert(User("bob".into())), Some(User("ann".into())));
/// assert_eq!(map.get::<User>(), Some(&User("bob".into())));
/// assert!(!map.contains::<u32>());
/// map.insert(7u32);
/// *map.get_mut::<u32>().unwrap() += 1;
/// assert_eq!(map.remove::<u32>(), Some(8));
/// assert_eq!(map.len(), 1);
/// ```
#[derive(Default)]
pub struct Extensions {
    /// Boxed so that an empty map is one pointer (a `HashMap` is 48 bytes)
    /// in every idle connection.
    #[allow(clippy::box_collection)]
    map: Option<Box<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl Extensions {
    /// Stores `value`, returning the previous value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.map
            .get_or_insert_with(Default::default)
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }

    /// The value of type `T`, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map.as_ref()?.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The value of type `T`, mutably.
    pub fn get_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.map
            .as_mut()?
            .get_mut(&TypeId::of::<T>())?
            .downcast_mut()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> Option<T> {
        self.map
            .as_mut()?
            .remove(&TypeId::of::<T>())
            .and_then(|b| b.downcast().ok().map(|b| *b))
    }

    /// Whether a value of type `T` is stored.
    pub fn contains<T: Send + Sync + 'static>(&self) -> bool {
        self.get::<T>().is_some()
    }

    /// Moves every value of `other` into `self` (replacing same-type values).
    pub fn extend(&mut self, other: Extensions) {
        if let Some(theirs) = other.map {
            self.map
                .get_or_insert_with(Default::default)
                .extend(*theirs);
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.len())
            .finish()
    }
}

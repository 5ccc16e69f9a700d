//! [`Lazy`]: per-connection state allocated on first use.
//!
//! Why: most of a server's connections are idle, and an idle connection never subscribes
//! to presence, types, or is offered a message. An empty `HashMap` inline still costs 48
//! bytes (its table header and hasher); behind `Lazy` it costs 16 until the first use,
//! which moved the session handle from a 512-byte to a 256-byte allocation (see the
//! per-connection budget in `docs/architecture.md`).

use std::cell::{RefCell, RefMut};
use std::fmt;

/// A `T` created (with `T::default()`) the first time it is borrowed mutably.
pub struct Lazy<T>(RefCell<Option<Box<T>>>);

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(RefCell::new(None))
    }
}

impl<T: fmt::Debug> fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.try_borrow() {
            Ok(slot) => match slot.as_deref() {
                Some(value) => value.fmt(f),
                None => f.write_str("(not allocated)"),
            },
            Err(_) => f.write_str("(borrowed)"),
        }
    }
}

impl<T: Default> Lazy<T> {
    /// The value, created now if it was not yet. Panics if already borrowed (as
    /// `RefCell::borrow_mut`).
    pub fn borrow_mut(&self) -> RefMut<'_, T> {
        RefMut::map(self.0.borrow_mut(), |slot| {
            &mut **slot.get_or_insert_with(Box::default)
        })
    }
}

impl<T> Lazy<T> {
    /// `f` on the value if it exists; `None` (and nothing allocated) if not.
    pub fn with_existing<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.0.borrow_mut().as_deref_mut().map(f)
    }

    /// Whether the value was created.
    pub fn is_allocated(&self) -> bool {
        self.0.borrow().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn allocates_on_first_mutable_borrow_only() {
        let lazy: Lazy<HashMap<u64, u64>> = Lazy::default();
        assert_eq!(lazy.with_existing(|m| m.len()), None);
        assert!(!lazy.is_allocated(), "a look does not allocate");
        lazy.borrow_mut().insert(1, 2);
        assert!(lazy.is_allocated());
        assert_eq!(lazy.with_existing(|m| m.get(&1).copied()), Some(Some(2)));
        assert_eq!(format!("{lazy:?}"), "{1: 2}");
        assert_eq!(
            format!("{:?}", Lazy::<Vec<u8>>::default()),
            "(not allocated)"
        );
    }

    #[test]
    fn it_is_two_words() {
        assert_eq!(
            std::mem::size_of::<Lazy<HashMap<u64, u64>>>(),
            2 * std::mem::size_of::<usize>()
        );
    }
}

//! Collects every error of one expansion, so the user sees all mistakes in one compile.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::Span;
use quote::ToTokens;

/// The errors found so far (serde's `Ctxt`).
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    /// Records an error spanned on `tokens` (from their first to their last token).
    pub(crate) fn error_spanned_by(&self, tokens: impl ToTokens, message: impl Display) {
        self.syn_error(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error at `span`.
    pub(crate) fn error_at(&self, span: Span, message: impl Display) {
        self.syn_error(syn::Error::new(span, message));
    }

    /// Records an error syn produced.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// All errors combined into one, or `Ok` when there were none.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

/// A value that may be given only once: an argument, the `consume` fn, an extractor fn
/// (serde's `Attr::set`).
pub(crate) struct Once<T> {
    what: String,
    value: Option<T>,
}

impl<T> Once<T> {
    /// `what` completes the error "duplicate {what}".
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            value: None,
        }
    }

    /// Sets the value; a second call records an error spanned on `at`, the second occurrence.
    pub(crate) fn set(&mut self, cx: &Ctxt, at: impl ToTokens, value: T) {
        if self.value.is_some() {
            cx.error_spanned_by(at, format_args!("duplicate {}", self.what));
        } else {
            self.value = Some(value);
        }
    }

    /// True once a value was set.
    pub(crate) fn is_set(&self) -> bool {
        self.value.is_some()
    }

    /// The value, if one was set.
    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_reports_the_second_occurrence_and_keeps_the_first() {
        let cx = Ctxt::default();
        let mut once = Once::new("`max_retries` argument");
        once.set(&cx, quote::quote!(first), 1);
        once.set(&cx, quote::quote!(second), 2);
        assert_eq!(once.get(), Some(1));
        let error = cx.check().expect_err("one duplicate");
        assert_eq!(error.to_string(), "duplicate `max_retries` argument");
    }

    #[test]
    fn check_combines_every_error() {
        let cx = Ctxt::default();
        cx.error_at(Span::call_site(), "one");
        cx.error_at(Span::call_site(), "two");
        let messages: Vec<String> = cx
            .check()
            .expect_err("two errors")
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(messages, ["one", "two"]);
    }
}

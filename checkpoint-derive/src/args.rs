//! The arguments of `#[checkpoint_handler(…)]`.

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, ExprLit, ExprUnary, Lit, LitInt, LitStr, Token, UnOp};

use crate::ctxt::{Ctxt, Once};

/// `max_retries = <u32>`: retries after the first failed attempt; absent = retry forever.
pub(crate) const MAX_RETRIES: &str = "max_retries";
/// `name = "…"`: the registered handler name; defaults to the type's name.
pub(crate) const NAME: &str = "name";
/// `transactional`: `consume` runs inside the checkpoint transaction.
pub(crate) const TRANSACTIONAL: &str = "transactional";
/// Every valid key, in the order the docs list them.
const KEYS: [&str; 3] = [MAX_RETRIES, NAME, TRANSACTIONAL];

/// The parsed arguments. Invalid values are reported to the [`Ctxt`] and left at their default.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) max_retries: Option<u32>,
    pub(crate) name: Option<LitStr>,
    pub(crate) transactional: bool,
}

/// Parses the attribute's arguments, recording every mistake in `cx`.
pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream) -> Args {
    let mut parser = ArgsParser::new(cx);
    if let Err(error) = syn::meta::parser(|meta| parser.parse(meta)).parse2(tokens) {
        cx.syn_error(error);
    }
    parser.finish()
}

struct ArgsParser<'c> {
    cx: &'c Ctxt,
    max_retries: Once<u32>,
    name: Once<LitStr>,
    transactional: Once<()>,
}

impl<'c> ArgsParser<'c> {
    fn new(cx: &'c Ctxt) -> Self {
        let duplicate = |key: &str| format!("`{key}` argument");
        Self {
            cx,
            max_retries: Once::new(duplicate(MAX_RETRIES)),
            name: Once::new(duplicate(NAME)),
            transactional: Once::new(duplicate(TRANSACTIONAL)),
        }
    }

    /// One `key`, `key = value` or `key(…)`. Returns `Err` only for syntax it cannot skip;
    /// semantic mistakes are recorded and parsing goes on.
    fn parse(&mut self, meta: ParseNestedMeta) -> syn::Result<()> {
        let cx = self.cx;
        if meta.path.is_ident(MAX_RETRIES) {
            let value: Expr = meta.value()?.parse()?;
            if let Some(max_retries) = max_retries_value(cx, &value) {
                self.max_retries.set(cx, &meta.path, max_retries);
            }
        } else if meta.path.is_ident(NAME) {
            let value: Expr = meta.value()?.parse()?;
            if let Some(name) = name_value(cx, &value) {
                self.name.set(cx, &meta.path, name);
            }
        } else if meta.path.is_ident(TRANSACTIONAL) {
            if let Some(value) = skip_value(&meta)? {
                cx.error_spanned_by(
                    value,
                    format_args!(
                        "`{TRANSACTIONAL}` is a flag and takes no value: write \
                         `#[checkpoint_handler({TRANSACTIONAL})]`, or leave it out"
                    ),
                );
            } else {
                self.transactional.set(cx, &meta.path, ());
            }
        } else {
            skip_value(&meta)?;
            let keys: Vec<String> = KEYS.iter().map(|key| format!("`{key}`")).collect();
            cx.error_spanned_by(
                &meta.path,
                format_args!(
                    "unknown `#[checkpoint_handler]` argument `{}`; expected one of {}",
                    quote::ToTokens::to_token_stream(&meta.path)
                        .to_string()
                        .replace(' ', ""),
                    keys.join(", ")
                ),
            );
        }
        Ok(())
    }

    fn finish(self) -> Args {
        Args {
            max_retries: self.max_retries.get(),
            name: self.name.get(),
            transactional: self.transactional.is_set(),
        }
    }
}

/// Consumes what follows a key (`= expr` or `(…)`) so parsing can go on after a mistake.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<Option<TokenStream>> {
    if meta.input.peek(Token![=]) {
        let value: Expr = meta.value()?.parse()?;
        Ok(Some(quote::ToTokens::into_token_stream(value)))
    } else if meta.input.peek(syn::token::Paren) {
        let group: proc_macro2::Group = meta.input.parse()?;
        Ok(Some(quote::ToTokens::into_token_stream(group)))
    } else {
        Ok(None)
    }
}

fn max_retries_value(cx: &Ctxt, value: &Expr) -> Option<u32> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => u32_literal(cx, int),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if matches!(**expr, Expr::Lit(_)) => {
            cx.error_spanned_by(
                value,
                format_args!("`{MAX_RETRIES}` cannot be negative; leave it out to retry forever"),
            );
            None
        }
        _ => {
            cx.error_spanned_by(
                value,
                format_args!("`{MAX_RETRIES}` takes an integer literal, like `{MAX_RETRIES} = 3`"),
            );
            None
        }
    }
}

fn u32_literal(cx: &Ctxt, int: &LitInt) -> Option<u32> {
    if !matches!(int.suffix(), "" | "u32") {
        cx.error_at(
            int.span(),
            format_args!(
                "`{MAX_RETRIES}` is a `u32`; drop the `{}` suffix",
                int.suffix()
            ),
        );
        return None;
    }
    match int.base10_parse::<u32>() {
        Ok(value) => Some(value),
        Err(_) => {
            cx.error_at(
                int.span(),
                format_args!(
                    "`{MAX_RETRIES}` is out of range: it is a `u32` (at most {})",
                    u32::MAX
                ),
            );
            None
        }
    }
}

fn name_value(cx: &Ctxt, value: &Expr) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(name),
            ..
        }) if name.value().trim().is_empty() => {
            cx.error_spanned_by(name, format_args!("`{NAME}` cannot be empty"));
            None
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(name),
            ..
        }) => Some(name.clone()),
        _ => {
            cx.error_spanned_by(
                value,
                format_args!("`{NAME}` takes a string literal, like `{NAME} = \"orders\"`"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse_ok(tokens: TokenStream) -> Args {
        let cx = Ctxt::default();
        let args = parse(&cx, tokens);
        cx.check().expect("valid arguments");
        args
    }

    fn errors(tokens: TokenStream) -> Vec<String> {
        let cx = Ctxt::default();
        parse(&cx, tokens);
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn no_arguments_means_retry_forever_default_name_not_transactional() {
        let args = parse_ok(quote!());
        assert_eq!(args.max_retries, None);
        assert!(args.name.is_none());
        assert!(!args.transactional);
    }

    #[test]
    fn every_argument() {
        let args = parse_ok(quote!(max_retries = 3, name = "orders", transactional));
        assert_eq!(args.max_retries, Some(3));
        assert_eq!(args.name.map(|n| n.value()).as_deref(), Some("orders"));
        assert!(args.transactional);
    }

    #[test]
    fn max_retries_accepts_the_whole_u32_range() {
        assert_eq!(parse_ok(quote!(max_retries = 0)).max_retries, Some(0));
        assert_eq!(
            parse_ok(quote!(max_retries = 4_294_967_295u32)).max_retries,
            Some(u32::MAX)
        );
    }

    #[test]
    fn bad_max_retries_values() {
        assert_eq!(
            errors(quote!(max_retries = "3")),
            ["`max_retries` takes an integer literal, like `max_retries = 3`"]
        );
        assert_eq!(
            errors(quote!(max_retries = -1)),
            ["`max_retries` cannot be negative; leave it out to retry forever"]
        );
        assert_eq!(
            errors(quote!(max_retries = 4294967296)),
            ["`max_retries` is out of range: it is a `u32` (at most 4294967295)"]
        );
        assert_eq!(
            errors(quote!(max_retries = 3u64)),
            ["`max_retries` is a `u32`; drop the `u64` suffix"]
        );
    }

    #[test]
    fn unknown_key_lists_every_valid_key() {
        assert_eq!(
            errors(quote!(retries = 3)),
            [
                "unknown `#[checkpoint_handler]` argument `retries`; expected one of \
                 `max_retries`, `name`, `transactional`"
            ]
        );
    }

    #[test]
    fn every_mistake_is_reported_and_parsing_goes_on() {
        assert_eq!(
            errors(quote!(
                max_retries = 1,
                max_retries = 2,
                name = 5,
                transactional = true,
                bogus(x),
                name = ""
            )),
            [
                "duplicate `max_retries` argument",
                "`name` takes a string literal, like `name = \"orders\"`",
                "`transactional` is a flag and takes no value: write \
                 `#[checkpoint_handler(transactional)]`, or leave it out",
                "unknown `#[checkpoint_handler]` argument `bogus`; expected one of \
                 `max_retries`, `name`, `transactional`",
                "`name` cannot be empty",
            ]
        );
    }
}

//! Reads the `impl` block: finds `consume` and the extractor fns, keeping the original items
//! (and so their spans) for the later stages.

use quote::quote;
use syn::ext::IdentExt;
use syn::{
    Attribute, FnArg, GenericArgument, ImplItem, ImplItemFn, Item, ItemImpl, PatType,
    PathArguments, Receiver, Signature, Type,
};

use crate::ctxt::{Ctxt, Once};

/// The name of the fn that handles a message.
pub(crate) const CONSUME: &str = "consume";
/// The name of the fn that handles a transactional batch's new messages in one call.
pub(crate) const CONSUME_BATCH: &str = "consume_batch";

/// The helper attributes that mark extractor fns. Each one's name is also the name of the
/// `Handler` method it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extractor {
    EntityId,
    EntityTime,
    EventType,
    EventVersion,
    DedupKey,
    RetryConsume,
}

impl Extractor {
    pub(crate) const ALL: [Self; 6] = [
        Self::EntityId,
        Self::EntityTime,
        Self::EventType,
        Self::EventVersion,
        Self::DedupKey,
        Self::RetryConsume,
    ];

    /// Attribute name, and name of the `Handler` method it implements.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::EntityId => "entity_id",
            Self::EntityTime => "entity_time",
            Self::EventType => "event_type",
            Self::EventVersion => "event_version",
            Self::DedupKey => "dedup_key",
            Self::RetryConsume => "retry_consume",
        }
    }

    /// The signature the marked fn must have (`T` is the payload type of `consume`).
    pub(crate) fn signature(self) -> &'static str {
        match self {
            Self::EntityTime => "fn(&T) -> Option<DateTime<Utc>>",
            Self::RetryConsume => "fn(&T, &Metadata, &HandlerError) -> bool",
            Self::EntityId | Self::EventType | Self::EventVersion | Self::DedupKey => {
                "fn(&T) -> Option<String>"
            }
        }
    }

    /// Parameters besides the optional `&self`.
    pub(crate) fn arity(self) -> usize {
        match self {
            Self::RetryConsume => 3,
            _ => 1,
        }
    }

    /// The extractor `attr` marks: `#[entity_id]` or `#[checkpoint::entity_id]`.
    pub(crate) fn of(attr: &Attribute) -> Option<Self> {
        let segments = &attr.path().segments;
        let name = match segments.len() {
            1 => &segments[0].ident,
            2 if segments[0].ident == "checkpoint" => &segments[1].ident,
            _ => return None,
        };
        Self::ALL.into_iter().find(|kind| name == kind.name())
    }
}

/// An extractor fn as found in the impl block.
pub(crate) struct ExtractorFn<'a> {
    pub(crate) kind: Extractor,
    pub(crate) func: &'a ImplItemFn,
}

/// The impl block as read, before its signatures are checked.
pub(crate) struct Input<'a> {
    pub(crate) item: &'a ItemImpl,
    pub(crate) consume: Option<&'a ImplItemFn>,
    pub(crate) consume_batch: Option<&'a ImplItemFn>,
    pub(crate) extractors: Vec<ExtractorFn<'a>>,
    /// False for generic impls, which get no stub `Handler` impl on error.
    pub(crate) can_implement: bool,
}

impl<'a> Input<'a> {
    /// Reads `item`, recording misplaced or repeated `consume` and helper attributes. `None`
    /// for a trait impl: its items are not a handler's.
    pub(crate) fn from_impl(cx: &Ctxt, item: &'a ItemImpl) -> Option<Self> {
        if let Some((_, trait_path, _)) = &item.trait_ {
            cx.error_spanned_by(
                trait_path,
                "`#[checkpoint_handler]` goes on an inherent `impl YourHandler { … }` block, not \
                 on a trait impl; it writes the `Handler` impl for you",
            );
            return None;
        }
        let generic = !item.generics.params.is_empty() || item.generics.where_clause.is_some();
        if generic {
            cx.error_spanned_by(
                &item.generics,
                "`#[checkpoint_handler]` does not support generic impl blocks; implement \
                 `checkpoint::Handler` by hand for generic handlers",
            );
        }

        let mut consume = Once::new(format!("`{CONSUME}` fn; a handler has exactly one"));
        let mut consume_batch =
            Once::new(format!("`{CONSUME_BATCH}` fn; a handler has at most one"));
        let mut extractors = Extractor::ALL.map(|kind| {
            Once::new(format!(
                "`#[{}]` fn; a handler has at most one",
                kind.name()
            ))
        });
        for impl_item in &item.items {
            let helpers = helper_attrs(cx, item_attrs(impl_item));
            let ImplItem::Fn(func) = impl_item else {
                for (attr, kind) in helpers {
                    cx.error_spanned_by(
                        attr,
                        format_args!("`#[{}]` goes on a fn of the impl block", kind.name()),
                    );
                }
                continue;
            };
            if let Some((second, _)) = helpers.get(1) {
                cx.error_spanned_by(
                    second,
                    "a fn can be only one extractor: give each extractor its own fn",
                );
            }
            let first_helper = helpers.first();
            let handles = [CONSUME, CONSUME_BATCH]
                .into_iter()
                .find(|name| func.sig.ident == name);
            if let Some(name) = handles {
                let slot = if name == CONSUME {
                    &mut consume
                } else {
                    &mut consume_batch
                };
                slot.set(cx, &func.sig.ident, func);
                if let Some((attr, kind)) = first_helper {
                    cx.error_spanned_by(
                        attr,
                        format_args!(
                            "`{name}` cannot also be the `#[{}]` extractor: give the \
                             extractor its own fn",
                            kind.name()
                        ),
                    );
                }
            } else if let Some((attr, kind)) = first_helper {
                extractors[*kind as usize].set(cx, attr, func);
            }
        }

        Some(Self {
            item,
            consume: consume.get(),
            consume_batch: consume_batch.get(),
            extractors: Extractor::ALL
                .into_iter()
                .zip(extractors)
                .filter_map(|(kind, func)| {
                    Some(ExtractorFn {
                        kind,
                        func: func.get()?,
                    })
                })
                .collect(),
            can_implement: !generic,
        })
    }
}

/// The helper attributes among `attrs`; one with arguments is reported.
fn helper_attrs<'a>(cx: &Ctxt, attrs: &'a [Attribute]) -> Vec<(&'a Attribute, Extractor)> {
    attrs
        .iter()
        .filter_map(|attr| {
            let kind = Extractor::of(attr)?;
            if let syn::Meta::List(_) | syn::Meta::NameValue(_) = &attr.meta {
                cx.error_spanned_by(
                    attr,
                    format_args!("`#[{}]` takes no arguments", kind.name()),
                );
            }
            Some((attr, kind))
        })
        .collect()
}

fn item_attrs(item: &ImplItem) -> &[Attribute] {
    match item {
        ImplItem::Const(c) => &c.attrs,
        ImplItem::Fn(f) => &f.attrs,
        ImplItem::Type(t) => &t.attrs,
        ImplItem::Macro(m) => &m.attrs,
        _ => &[],
    }
}

fn item_attrs_mut(item: &mut ImplItem) -> Option<&mut Vec<Attribute>> {
    match item {
        ImplItem::Const(c) => Some(&mut c.attrs),
        ImplItem::Fn(f) => Some(&mut f.attrs),
        ImplItem::Type(t) => Some(&mut t.attrs),
        ImplItem::Macro(m) => Some(&mut m.attrs),
        _ => None,
    }
}

/// The user's impl block as the expansion emits it: helper attributes removed (they are not
/// real attributes there), and a second `consume` or `consume_batch` dropped (it was reported
/// already; rustc would repeat the error).
pub(crate) fn emitted_impl(item: &ItemImpl) -> ItemImpl {
    let mut item = item.clone();
    let mut seen = [false; 2];
    item.items.retain(|impl_item| match impl_item {
        ImplItem::Fn(func) => match [CONSUME, CONSUME_BATCH]
            .iter()
            .position(|name| func.sig.ident == name)
        {
            Some(i) => !std::mem::replace(&mut seen[i], true),
            None => true,
        },
        _ => true,
    });
    for impl_item in &mut item.items {
        if let Some(attrs) = item_attrs_mut(impl_item) {
            attrs.retain(|attr| Extractor::of(attr).is_none());
        }
    }
    item
}

/// Where to point an error about an item that is not an `impl` block.
pub(crate) fn not_an_impl_span(item: &Item) -> proc_macro2::TokenStream {
    match item {
        Item::Fn(f) => {
            let sig = &f.sig;
            quote!(#sig)
        }
        Item::Struct(s) => {
            let (token, ident) = (&s.struct_token, &s.ident);
            quote!(#token #ident)
        }
        Item::Enum(e) => {
            let (token, ident) = (&e.enum_token, &e.ident);
            quote!(#token #ident)
        }
        Item::Trait(t) => {
            let (token, ident) = (&t.trait_token, &t.ident);
            quote!(#token #ident)
        }
        other => quote!(#other),
    }
}

/// A fn's receiver and its other parameters.
pub(crate) fn params(sig: &Signature) -> (Option<&Receiver>, Vec<&PatType>) {
    let mut receiver = None;
    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => receiver = Some(r),
            FnArg::Typed(t) => typed.push(t),
        }
    }
    (receiver, typed)
}

/// True for `&self` (or `self: &Self`).
pub(crate) fn is_ref_self(receiver: &Receiver) -> bool {
    matches!(&*receiver.ty, Type::Reference(r) if r.mutability.is_none() && is_named(&r.elem, "Self"))
}

/// How `consume`'s payload parameter is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// `&[u8]`, `Vec<u8>`, `&str`, `String`: the bytes, or them as UTF-8.
    Raw,
    /// Anything else taken by value: JSON.
    Json,
    /// A reference to something other than `[u8]` or `str`: not supported.
    Borrowed,
}

/// Classifies a payload type by its spelling (the macro cannot see through aliases).
pub(crate) fn payload_kind(ty: &Type) -> PayloadKind {
    match ty {
        Type::Group(group) => payload_kind(&group.elem),
        Type::Paren(paren) => payload_kind(&paren.elem),
        Type::Reference(r) => {
            let bytes = matches!(&*r.elem, Type::Slice(s) if is_named(&s.elem, "u8"));
            if r.mutability.is_none() && (bytes || is_named(&r.elem, "str")) {
                PayloadKind::Raw
            } else {
                PayloadKind::Borrowed
            }
        }
        _ if is_named(ty, "String") => PayloadKind::Raw,
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last();
            let vec_u8 = last.is_some_and(|seg| {
                seg.ident == "Vec"
                    && matches!(&seg.arguments, PathArguments::AngleBracketed(args)
                        if args.args.len() == 1
                            && matches!(&args.args[0], GenericArgument::Type(t) if is_named(t, "u8")))
            });
            if vec_u8 {
                PayloadKind::Raw
            } else {
                PayloadKind::Json
            }
        }
        _ => PayloadKind::Json,
    }
}

/// True when `ty` is a path whose last segment is `name` with no generic arguments.
pub(crate) fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Group(group) => is_named(&group.elem, name),
        Type::Paren(paren) => is_named(&paren.elem, name),
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|seg| seg.ident == name && seg.arguments.is_none()),
        _ => false,
    }
}

/// True for `&mut Context<'_>` (any path ending in `Context`).
pub(crate) fn is_context(ty: &Type) -> bool {
    is_mut_ref_to(ty, "Context")
}

/// True for `&mut BatchContext<'_>` (any path ending in `BatchContext`).
pub(crate) fn is_batch_context(ty: &Type) -> bool {
    is_mut_ref_to(ty, "BatchContext")
}

fn is_mut_ref_to(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Group(group) => is_mut_ref_to(&group.elem, name),
        Type::Reference(r) if r.mutability.is_some() => matches!(&*r.elem,
            Type::Path(p) if p.qself.is_none()
                && p.path.segments.last().is_some_and(|seg| seg.ident == name)),
        _ => false,
    }
}

/// The element type of `Vec<T>` (any path ending in `Vec` with one type argument).
pub(crate) fn vec_element(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Group(group) => vec_element(&group.elem),
        Type::Paren(paren) => vec_element(&paren.elem),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            match &last.arguments {
                PathArguments::AngleBracketed(args)
                    if last.ident == "Vec" && args.args.len() == 1 =>
                {
                    match &args.args[0] {
                        GenericArgument::Type(elem) => Some(elem),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The name of the type the impl is for (its last path segment), if it has one.
pub(crate) fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Group(group) => type_name(&group.elem),
        Type::Paren(paren) => type_name(&paren.elem),
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .map(|seg| seg.ident.unraw().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn payload_kinds() {
        let kind = |ty: Type| payload_kind(&ty);
        assert_eq!(kind(parse_quote!(&[u8])), PayloadKind::Raw);
        assert_eq!(kind(parse_quote!(&'static [u8])), PayloadKind::Raw);
        assert_eq!(kind(parse_quote!(Vec<u8>)), PayloadKind::Raw);
        assert_eq!(kind(parse_quote!(std::vec::Vec<u8>)), PayloadKind::Raw);
        assert_eq!(kind(parse_quote!(&str)), PayloadKind::Raw);
        assert_eq!(kind(parse_quote!(String)), PayloadKind::Raw);
        assert_eq!(kind(parse_quote!(std::string::String)), PayloadKind::Raw);
        assert_eq!(kind(parse_quote!(serde_json::Value)), PayloadKind::Json);
        assert_eq!(kind(parse_quote!(Vec<u32>)), PayloadKind::Json);
        assert_eq!(kind(parse_quote!(OrderPlaced)), PayloadKind::Json);
        assert_eq!(kind(parse_quote!(&OrderPlaced)), PayloadKind::Borrowed);
        assert_eq!(kind(parse_quote!(&mut [u8])), PayloadKind::Borrowed);
    }

    #[test]
    fn context_parameter() {
        assert!(is_context(&parse_quote!(&mut Context<'_>)));
        assert!(is_context(&parse_quote!(&mut checkpoint::Context)));
        assert!(!is_context(&parse_quote!(&Context<'_>)));
        assert!(!is_context(&parse_quote!(&mut Metadata)));
        assert!(is_batch_context(&parse_quote!(&mut BatchContext<'_>)));
        assert!(!is_batch_context(&parse_quote!(&mut Context<'_>)));
    }

    #[test]
    fn vec_elements() {
        let elem = |ty: Type| vec_element(&ty).map(|t| quote!(#t).to_string());
        assert_eq!(elem(parse_quote!(Vec<Order>)), Some("Order".to_owned()));
        assert_eq!(
            elem(parse_quote!(std::vec::Vec<&str>)),
            Some("& str".to_owned())
        );
        assert_eq!(elem(parse_quote!(&[Order])), None);
        assert_eq!(elem(parse_quote!(Order)), None);
    }

    #[test]
    fn finds_consume_and_extractors_and_reports_repeats() {
        let item: ItemImpl = parse_quote! {
            impl Orders {
                async fn consume(&self, order: OrderPlaced) -> Outcome { todo!() }
                #[entity_id] fn id(o: &OrderPlaced) -> Option<String> { None }
                #[checkpoint::event_type] fn kind(o: &OrderPlaced) -> Option<String> { None }
                #[entity_id] fn id2(o: &OrderPlaced) -> Option<String> { None }
                #[dedup_key] #[event_version] fn both(o: &OrderPlaced) -> Option<String> { None }
                fn helper(&self) {}
            }
        };
        let cx = Ctxt::default();
        let input = Input::from_impl(&cx, &item).expect("an inherent impl");
        assert!(input.consume.is_some());
        let found: Vec<(Extractor, String)> = input
            .extractors
            .iter()
            .map(|e| (e.kind, e.func.sig.ident.to_string()))
            .collect();
        assert_eq!(
            found,
            [
                (Extractor::EntityId, "id".to_owned()),
                (Extractor::EventType, "kind".to_owned()),
                (Extractor::DedupKey, "both".to_owned()),
            ]
        );
        let errors: Vec<String> = cx
            .check()
            .expect_err("two mistakes")
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errors,
            [
                "duplicate `#[entity_id]` fn; a handler has at most one",
                "a fn can be only one extractor: give each extractor its own fn",
            ]
        );
    }

    #[test]
    fn emitted_impl_strips_helpers_and_a_second_consume() {
        let item: ItemImpl = parse_quote! {
            impl Orders {
                fn consume(&self, p: String) -> Outcome { todo!() }
                fn consume(&self, p: Vec<u8>) -> Outcome { todo!() }
                #[inline] #[entity_id] fn id(p: &String) -> Option<String> { None }
            }
        };
        let expected: ItemImpl = parse_quote! {
            impl Orders {
                fn consume(&self, p: String) -> Outcome { todo!() }
                #[inline] fn id(p: &String) -> Option<String> { None }
            }
        };
        assert_eq!(
            quote!(#expected).to_string(),
            quote::ToTokens::to_token_stream(&emitted_impl(&item)).to_string()
        );
    }
}

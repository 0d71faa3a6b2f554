//! Parsing of `#[event(...)]` attributes and expansion of `#[derive(Event)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Data, DeriveInput, Fields, Ident, LitInt, LitStr, Path};

/// The attributes of one `#[derive(Event)]`, validated.
struct EventAttrs {
    ty: LitStr,
    version: u32,
    destination: LitStr,
    key: Ident,
    krate: Path,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let attrs = parse_attrs(input)?;
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let EventAttrs {
        ty,
        version,
        destination,
        key,
        krate,
    } = attrs;
    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Event for #name #ty_generics #where_clause {
                const TYPE: &'static str = #ty;
                const VERSION: u32 = #version;
                const DESTINATION: &'static str = #destination;

                fn partition_key(&self) -> ::std::string::String {
                    ::std::string::ToString::to_string(&self.#key)
                }
            }
        };
    })
}

/// Parses every `#[event(...)]` attribute, collecting all errors so the user sees
/// them in one compile.
fn parse_attrs(input: &DeriveInput) -> syn::Result<EventAttrs> {
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };

    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(named),
            _ => {
                push(syn::Error::new(
                    input.ident.span(),
                    "#[derive(Event)] needs a struct with named fields",
                ));
                None
            }
        },
        _ => {
            push(syn::Error::new(
                input.ident.span(),
                "#[derive(Event)] can only be used on structs with named fields",
            ));
            None
        }
    };

    let mut ty: Option<LitStr> = None;
    let mut version: Option<u32> = None;
    let mut destination: Option<LitStr> = None;
    let mut key: Option<Ident> = None;
    let mut krate: Option<Path> = None;
    let mut seen_attr = false;

    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        seen_attr = true;
        let result = attr.parse_nested_meta(|meta| {
            let dup = |what: &str| meta.error(format!("duplicate `{what}` attribute"));
            if meta.path.is_ident("type") {
                let lit: LitStr = meta.value()?.parse()?;
                validate_type(&lit)?;
                if ty.replace(lit).is_some() {
                    return Err(dup("type"));
                }
            } else if meta.path.is_ident("version") {
                let lit: LitInt = meta.value()?.parse()?;
                let value: u32 = lit.base10_parse().map_err(|_| {
                    syn::Error::new(lit.span(), "`version` must be a positive integer")
                })?;
                if value == 0 {
                    return Err(syn::Error::new(lit.span(), "`version` starts at 1"));
                }
                if version.replace(value).is_some() {
                    return Err(dup("version"));
                }
            } else if meta.path.is_ident("destination") {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`destination` must not be empty",
                    ));
                }
                if destination.replace(lit).is_some() {
                    return Err(dup("destination"));
                }
            } else if meta.path.is_ident("key") {
                let ident: Ident = meta.value()?.parse()?;
                if key.replace(ident).is_some() {
                    return Err(dup("key"));
                }
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                if krate.replace(lit.parse()?).is_some() {
                    return Err(dup("crate"));
                }
            } else {
                return Err(meta.error(
                    "unknown `event` attribute; expected one of `type`, `version`, \
                     `destination`, `key`, `crate`",
                ));
            }
            Ok(())
        });
        if let Err(e) = result {
            push(e);
        }
    }

    if !seen_attr {
        push(syn::Error::new(
            input.ident.span(),
            "missing #[event(type = \"...\", destination = \"...\", key = field)] attribute",
        ));
    } else {
        let missing = |what: &str| {
            syn::Error::new(
                input.ident.span(),
                format!("missing `{what}` in #[event(...)]"),
            )
        };
        if ty.is_none() {
            push(missing("type"));
        }
        if destination.is_none() {
            push(missing("destination"));
        }
        if key.is_none() {
            push(missing("key"));
        }
    }

    if let (Some(key), Some(fields)) = (&key, fields) {
        let exists = fields
            .named
            .iter()
            .any(|f| f.ident.as_ref().is_some_and(|i| i == key));
        if !exists {
            push(syn::Error::new(
                key.span(),
                format!(
                    "no field `{key}` on `{}` to use as the ordering key",
                    input.ident
                ),
            ));
        }
    }

    if let Some(errors) = errors {
        return Err(errors);
    }
    match (ty, destination, key) {
        (Some(ty), Some(destination), Some(key)) => Ok(EventAttrs {
            ty,
            version: version.unwrap_or(1),
            destination,
            key,
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::eventbus)),
        }),
        _ => Err(syn::Error::new(
            Span::call_site(),
            "invalid #[event] attribute",
        )),
    }
}

/// A CloudEvents `type` is a non-empty string; we also refuse whitespace and
/// control characters, which no broker header or routing key handles well.
fn validate_type(lit: &LitStr) -> syn::Result<()> {
    let value = lit.value();
    if value.is_empty() {
        return Err(syn::Error::new(lit.span(), "`type` must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(syn::Error::new(
            lit.span(),
            format!("`type` must not contain whitespace or control characters (found {c:?})"),
        ));
    }
    Ok(())
}

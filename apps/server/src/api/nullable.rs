//! `Nullable<T>`: a field that is always present in an answer and may be `null`, declared so in the OpenAPI
//! document (`nullable: true`). poem-openapi's `Option<T>` documents an optional, non-nullable field, yet
//! answers `null` for `None`: a client generated from the document rejects such answers.

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{MaybeUndefined, ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;
use std::borrow::Cow;

/// A value or `null`; always written (as `null` when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nullable<T>(pub Option<T>);

impl<T> From<Option<T>> for Nullable<T> {
    fn from(v: Option<T>) -> Self {
        Self(v)
    }
}

impl<T: Type> Type for Nullable<T> {
    const IS_REQUIRED: bool = true;

    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        format!("nullable_{}", T::name()).into()
    }

    fn schema_ref() -> MetaSchemaRef {
        match T::schema_ref() {
            MetaSchemaRef::Inline(schema) => MetaSchemaRef::Inline(Box::new(MetaSchema {
                nullable: true,
                ..*schema
            })),
            // A `$ref` cannot carry `nullable` beside it in OpenAPI 3.0: wrap it.
            reference @ MetaSchemaRef::Reference(_) => MetaSchemaRef::Inline(Box::new(MetaSchema {
                nullable: true,
                all_of: vec![reference],
                ..MetaSchema::ANY
            })),
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(Type::as_raw_value)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(v) => v.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }
}

impl<T: ParseFromJSON> ParseFromJSON for Nullable<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            None | Some(Value::Null) => Ok(Self(None)),
            Some(v) => T::parse_from_json(Some(v))
                .map(|v| Self(Some(v)))
                .map_err(ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Nullable<T> {
    fn to_json(&self) -> Option<Value> {
        Some(self.0.as_ref().and_then(ToJSON::to_json).unwrap_or(Value::Null))
    }
}

/// A field of a partial update: left out (unchanged), `null` (cleared) or a value; declared `nullable`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Clearable<T>(pub MaybeUndefined<T>);

impl<T> Clearable<T> {
    /// `None`: unchanged; `Some(None)`: clear; `Some(Some(v))`: set.
    pub fn change(self) -> Option<Option<T>> {
        match self.0 {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(v) => Some(Some(v)),
        }
    }
}

impl<T: Type> Type for Clearable<T> {
    const IS_REQUIRED: bool = false;

    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        format!("clearable_{}", T::name()).into()
    }

    fn schema_ref() -> MetaSchemaRef {
        Nullable::<T>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.value().and_then(Type::as_raw_value)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match self.0.value() {
            Some(v) => v.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }

    fn is_none(&self) -> bool {
        self.0.is_undefined()
    }
}

impl<T: ParseFromJSON> ParseFromJSON for Clearable<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        MaybeUndefined::<T>::parse_from_json(value)
            .map(Self)
            .map_err(ParseError::propagate)
    }
}

impl<T: ToJSON> ToJSON for Clearable<T> {
    fn to_json(&self) -> Option<Value> {
        self.0.to_json()
    }
}

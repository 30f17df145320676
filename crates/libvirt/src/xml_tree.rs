//! A small element tree over quick-xml, enough to read and rewrite libvirt XML.
//!
//! libvirt documents are small, so a tree is simpler and safer than streaming
//! state machines. Writing goes through quick-xml's writer, which escapes every
//! attribute value and text node: nothing read from outside can inject markup.

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

/// One XML element with its attributes, child elements and text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Tag name.
    pub name: String,
    /// Attributes in document order, unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Concatenated, unescaped text directly inside this element.
    pub text: String,
}

impl Element {
    /// A new element with no attributes or children.
    pub fn new(name: &str) -> Self {
        Element {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Builder: adds an attribute.
    pub fn with_attr(mut self, key: &str, value: impl Into<String>) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Builder: adds a child.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    /// Builder: sets the text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// The attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets or replaces an attribute.
    pub fn set_attr(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key.to_string(), value)),
        }
    }

    /// The first child with this tag.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The first child with this tag, mutable.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    /// All children with this tag.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a path of tags, taking the first match at each step.
    pub fn find(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |el, name| el.child(name))
    }

    /// Removes every child with this tag.
    pub fn remove_children(&mut self, name: &str) {
        self.children.retain(|c| c.name != name);
    }

    /// Replaces the first child with this tag, or appends it.
    pub fn replace_child(&mut self, child: Element) {
        match self.children.iter_mut().find(|c| c.name == child.name) {
            Some(slot) => *slot = child,
            None => self.children.push(child),
        }
    }

    /// Serialises with every attribute and text escaped.
    pub fn to_xml(&self) -> String {
        let mut writer = Writer::new(Vec::new());
        self.write(&mut writer);
        String::from_utf8_lossy(&writer.into_inner()).into_owned()
    }

    fn write(&self, writer: &mut Writer<Vec<u8>>) {
        let mut start = BytesStart::new(self.name.as_str());
        for (k, v) in &self.attrs {
            start.push_attribute((k.as_str(), v.as_str()));
        }
        // Writing into a Vec cannot fail, so the io results carry no information.
        if self.children.is_empty() && self.text.is_empty() {
            let _ = writer.write_event(Event::Empty(start));
            return;
        }
        let _ = writer.write_event(Event::Start(start));
        if !self.text.is_empty() {
            let _ = writer.write_event(Event::Text(BytesText::new(&self.text)));
        }
        for child in &self.children {
            child.write(writer);
        }
        let _ = writer.write_event(Event::End(BytesEnd::new(self.name.as_str())));
    }
}

/// Parses a document and returns its root element.
pub fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    loop {
        match reader.read_event() {
            Err(e) => return Err(format!("at byte {}: {e}", reader.buffer_position())),
            Ok(Event::Start(start)) => stack.push(element_from(&start)?),
            Ok(Event::Empty(start)) => {
                let el = element_from(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Ok(Event::End(_)) => {
                let mut el = stack.pop().ok_or("unbalanced end tag")?;
                // Trimmed only once the whole text is known: it arrives in pieces
                // split at entity references, and spaces next to an entity are content.
                let trimmed = el.text.trim();
                if trimmed.len() != el.text.len() {
                    el.text = trimmed.to_string();
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Ok(Event::Text(text)) => {
                if let Some(el) = stack.last_mut() {
                    let text = text.decode().map_err(|e| e.to_string())?;
                    el.text.push_str(&text);
                }
            }
            Ok(Event::GeneralRef(reference)) => {
                if let Some(el) = stack.last_mut() {
                    if let Some(ch) = reference.resolve_char_ref().map_err(|e| e.to_string())? {
                        el.text.push(ch);
                    } else {
                        let name = reference.decode().map_err(|e| e.to_string())?;
                        let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?;
                        el.text.push_str(resolved);
                    }
                }
            }
            Ok(Event::CData(data)) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Ok(Event::Eof) => return Err("document has no root element".to_string()),
            Ok(_) => {}
        }
    }
}

fn element_from(start: &BytesStart<'_>) -> Result<Element, String> {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let value = attr
            .unescape_value()
            .map_err(|e| e.to_string())?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_attributes_children_and_text() {
        let xml = "<a x='1 &amp; 2'><b>t&lt;x</b><c/></a>";
        let el = parse(xml).expect("parse");
        assert_eq!(el.attr("x"), Some("1 & 2"));
        assert_eq!(el.find(&["b"]).map(|b| b.text.as_str()), Some("t<x"));
        let again = parse(&el.to_xml()).expect("reparse");
        assert_eq!(el, again);
    }

    #[test]
    fn escapes_hostile_values_on_write() {
        let el = Element::new("source").with_attr("file", "/x'/><evil a='&\"<>");
        let xml = el.to_xml();
        assert!(!xml.contains("<evil"), "{xml}");
        assert_eq!(parse(&xml).expect("parse"), el);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("not xml").is_err());
        assert!(parse("<a><b></a>").is_err());
    }
}

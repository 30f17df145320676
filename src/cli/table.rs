//! Plain-text tables for people: a header row and left-aligned columns two
//! spaces apart. Scripts should use `--json`; cells may contain spaces.

/// A table being built row by row.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; empty cells are shown as `-` so columns never collapse.
    pub fn row(&mut self, cells: Vec<String>) {
        let cells = cells
            .into_iter()
            .map(|c| if c.is_empty() { "-".to_string() } else { c })
            .collect();
        self.rows.push(cells);
    }

    /// The table as lines, each ending in a newline, without trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(width),
                    None => widths.push(width),
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "TYPE"]);
        t.row(vec!["default".into(), "dir".into()]);
        t.row(vec!["ceph".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME     TYPE\n\
             default  dir\n\
             ceph     -\n"
        );
    }

    #[test]
    fn header_only_table_renders_the_header() {
        assert_eq!(Table::new(&["ID", "PHASE"]).render(), "ID  PHASE\n");
    }
}

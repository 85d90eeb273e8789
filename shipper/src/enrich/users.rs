//! uid to user name, from `/etc/passwd` (re-read when it changes and a uid is unknown).
use std::{collections::HashMap, path::PathBuf, sync::Arc, time::SystemTime};

/// A cached view of the passwd file.
pub(super) struct Users {
    path: PathBuf,
    names: HashMap<u32, Arc<str>>,
    read_at: Option<SystemTime>,
}

impl Users {
    pub(super) fn new(path: PathBuf) -> Users {
        let mut users = Users { path, names: HashMap::new(), read_at: None };
        users.reload();
        users
    }

    /// The name of `uid`, if the passwd file has one.
    pub(super) fn name(&mut self, uid: u32) -> Option<Arc<str>> {
        if let Some(name) = self.names.get(&uid) {
            return Some(name.clone());
        }
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified != self.read_at {
            self.reload();
        }
        self.names.get(&uid).cloned()
    }

    fn reload(&mut self) {
        self.read_at = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        self.names = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let uid = fields.nth(1)?.parse().ok()?;
                Some((uid, Arc::from(name)))
            })
            .collect();
    }
}

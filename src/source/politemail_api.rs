//! The PoliteMail OData API: lists and their contacts.

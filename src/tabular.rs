//! Reading the CSV files people export from PoliteMail and the Entra admin center.

#!/usr/bin/env python3
"""Writes the sample inputs in this folder. Deterministic: the same script always writes the same bytes.

Run from anywhere: python3 samples/generate.py
The output is committed; rerun only when you change this script. See README.md for what each file holds.
Keys in keys/ are not made here (ssh-keygen output is random); see keys/README.md.
"""
import csv
import io
import json
import os
import random
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN = "contoso.example"
rng = random.Random(20251127)


def guid():
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


TENANT_ID = guid()
ALL_STAFF_GROUP = guid()
MANAGERS_GROUP = guid()
COMMS_TEAM_GROUP = guid()
ALL_STAFF_LIST_ID = 12
MANAGERS_LIST_ID = 15

FIRST = """Ada Alan Amara Andre Anika Ben Bianca Carlos Chloe Dana Daniel Elena Emeka Farah Felix Grace Hana Hugo Ines
Isaac Jade James Julia Kenji Lara Leo Lina Luca Maya Mei Nadia Noah Omar Olivia Pablo Priya Quinn Rosa Sofia Tariq
Theo Uma Victor Wen Yara Zoe""".split()
LAST = """Abbott Baker Brooks Castillo Dubois Evans Fischer Garcia Haddad Hughes Ito Jensen Khan Kowalski Larsen Lopez
Mendes Moreau Nakamura Novak Okafor Olsen Park Patel Quinn Rossi Santos Schmidt Silva Singh Sato Tanaka Torres Usman
Varga Walsh Weber Xu Young Zhang""".split()
DEPARTMENTS = ["Communications", "Finance", "Engineering", "Sales", "Operations", "Legal", "People", "Marketing"]
TITLES = ["Analyst", "Specialist", "Engineer", "Coordinator", "Advisor", "Associate", "Consultant"]


def user(first, last, *, upn=None, mail=None, proxies=None, user_type="Member", enabled=True, title=None, dept=None):
    local = f"{first}.{last}".lower()
    mail = mail if mail is not None else f"{first}.{last}@{DOMAIN}"
    if proxies is None:
        proxies = [f"SMTP:{mail}", f"smtp:{local}@contoso.onmicrosoft.example"] if mail else []
    return {
        "id": guid(),
        "userPrincipalName": upn or f"{local}@{DOMAIN}",
        "displayName": f"{first} {last}",
        "givenName": first,
        "surname": last,
        "mail": mail,
        "userType": user_type,
        "jobTitle": title or rng.choice(TITLES),
        "department": dept or rng.choice(DEPARTMENTS),
        "accountEnabled": enabled,
        "proxyAddresses": proxies,
    }


# --- The directory -------------------------------------------------------------------------------------------
pairs = [(f, l) for f in FIRST for l in LAST]
rng.shuffle(pairs)
staff = [user(f, l) for f, l in pairs[:330]]
for u in staff[:30]:
    u["jobTitle"] = rng.choice(["Manager", "Director", "Head of Team"])

# The messy cases, each a named person so README.md can point at them.
carol = user("Carol", "Chen", upn=f"cchen@{DOMAIN}", title="Director", dept="Communications")  # mail is not the UPN
deepa = user("Deepa", "Iyer", upn=f"diyer@{DOMAIN}",  # matches only through a proxy address
             proxies=[f"SMTP:Deepa.Iyer@{DOMAIN}", f"smtp:deepa@{DOMAIN}", "x500:/o=ExchangeLabs/cn=Recipients/cn=di"])
sam_old = user("Sam", "Rivera", upn=f"srivera@{DOMAIN}", mail=f"Sam.Rivera@{DOMAIN}", dept="Sales")  # ambiguous
sam_new = user("Sam", "Rivera", upn=f"sam.rivera2@{DOMAIN}", mail=f"sam.rivera@{DOMAIN}", dept="Sales",
               proxies=[f"SMTP:sam.rivera@{DOMAIN}"])
guest = user("Alex", "Kim", upn=f"alex.kim_fabrikam.example#EXT#@{DOMAIN}", mail="alex.kim@fabrikam.example",
             user_type="Guest", proxies=["SMTP:alex.kim@fabrikam.example"], dept="Communications",
             title="Agency Partner")
disabled = user("Morgan", "Price", enabled=False, dept="Finance")  # on leave: account disabled, still listed
departed = user("Riley", "Stone", enabled=False, dept="Operations")  # left: disabled, still a group member
breakglass = user("Break", "Glass", upn=f"breakglass@{DOMAIN}", mail="", proxies=[], title="Emergency access",
                  dept="IT")
breakglass["displayName"] = "Emergency Access (break glass)"
svc_kiosk = user("Kiosk", "Signage", upn=f"svc-signage@{DOMAIN}", mail="", proxies=[], title="Service account",
                 dept="IT")
svc_kiosk["displayName"] = "Lobby signage (service account)"
specials = [carol, deepa, sam_old, sam_new, guest, disabled, departed, breakglass, svc_kiosk]
users = staff + specials

# Non-user members of All Staff.
device = {"id": guid(), "@odata.type": "#microsoft.graph.device", "displayName": "KIOSK-LOBBY-01"}
service_principal = {"id": guid(), "@odata.type": "#microsoft.graph.servicePrincipal",
                     "displayName": "PoliteMail Sync"}
org_contact = {"id": guid(), "@odata.type": "#microsoft.graph.orgContact",
               "displayName": "Agency Press Desk (external contact)"}

# --- The All Staff list and group ----------------------------------------------------------------------------
regular = staff[:300]          # on the list
not_listed = staff[300:318]    # group members who are no longer on the list: removals
in_group = set(u["id"] for u in regular[:262])  # the rest of the list (and the specials below) are adds


def contact(u, email=None, company="Contoso"):
    return {
        "Email": u["mail"] if email is None else email,
        "First Name": u["givenName"],
        "Last Name": u["surname"],
        "Display Name": u["displayName"],
        "Company": company,
        "Title": u["jobTitle"],
        "Department": u["department"],
    }


def stranger(email, first, last, company):
    return {"Email": email, "First Name": first, "Last Name": last, "Display Name": f"{first} {last}".strip(),
            "Company": company, "Title": "", "Department": ""}


all_staff_rows = [contact(u) for u in regular]
# Insert the messy rows at fixed places so they are spread through the file.
case_user, space_user, dup_user, upn_case_user = regular[5], regular[17], regular[40], regular[61]
all_staff_rows[5]["Email"] = case_user["mail"].upper()                                   # case differences
all_staff_rows[17]["Email"] = f"  {space_user['mail']} "                                 # leading/trailing spaces
all_staff_rows[61]["Email"] = upn_case_user["userPrincipalName"].title()                # UPN, odd case
messy = [
    (23, contact(dup_user)),                                                             # exact duplicate
    (88, contact(dup_user, email=dup_user["mail"].lower())),                             # duplicate, other case
    (30, contact(carol)),                                                                # mail, not UPN
    (45, contact(deepa, email=f"deepa@{DOMAIN}")),                                       # proxy address only
    (60, contact(sam_old, email=f"sam.rivera@{DOMAIN}")),                                # ambiguous
    (75, contact(guest, company="Fabrikam")),                                            # guest
    (90, contact(disabled)),                                                             # disabled account
    (120, stranger(f"jamie.ortiz@{DOMAIN}", "Jamie", "Ortiz", "Contoso")),               # no such user
    (150, stranger("press@northwind.example", "", "", "Northwind Traders")),             # outside address
    (180, stranger(f"lee.walker@{DOMAIN.split('.')[0]}", "Lee", "Walker", "Contoso")),   # invalid: no dot domain
    (210, stranger(f"Dana Brooks <dana.brooks@{DOMAIN}>", "Dana", "Brooks", "Contoso")),  # invalid: name and brackets
]
for at, row in sorted(messy, key=lambda m: m[0], reverse=True):
    all_staff_rows.insert(at, row)
in_group |= {carol["id"], guest["id"]}

all_staff_members = []  # (object, kind label for the portal's "Member type")
for u in regular:
    if u["id"] in in_group:
        all_staff_members.append((u, "User"))
for u in [carol, guest] + not_listed + [departed, breakglass, svc_kiosk]:
    all_staff_members.append((u, "User"))
rng.shuffle(all_staff_members)
comms_team = {"id": COMMS_TEAM_GROUP, "displayName": "Comms Team"}
all_staff_members[10:10] = [(comms_team, "Group")]
all_staff_members[40:40] = [(device, "Device")]
all_staff_members[70:70] = [(service_principal, "Service Principal")]
all_staff_members[100:100] = [(org_contact, "Contact")]

# --- The Managers list and group -----------------------------------------------------------------------------
managers = staff[:30]
managers_rows = [
    {"E-mail": u["mail"], "First Name": u["givenName"], "Last Name": u["surname"], "Title": u["jobTitle"],
     "Department": u["department"]}
    for u in managers
]
managers_rows[3]["E-mail"] = managers_rows[3]["E-mail"].lower()
managers_rows.insert(12, {"E-mail": carol["mail"], "First Name": "Carol", "Last Name": "Chen",
                          "Title": carol["jobTitle"], "Department": carol["department"]})
former_managers = staff[318:321]
managers_members = [u for u in managers[:24]] + former_managers
rng.shuffle(managers_members)

# A second B2B guest, invited to be on the list but not yet in the group: an add that `show` flags GUEST. Made
# last, so that every earlier value (and so every line number in README.md) stays as it was.
new_guest = user("Priya", "Nair", upn=f"priya.nair_adatum.example#EXT#@{DOMAIN}", mail="priya.nair@adatum.example",
                 user_type="Guest", proxies=["SMTP:priya.nair@adatum.example"], dept="Communications",
                 title="Agency Partner")
users.append(new_guest)
all_staff_rows.append(contact(new_guest, company="Adatum"))

# --- Writing ---------------------------------------------------------------------------------------------------


def write_csv(name, header, rows, *, delimiter=",", bom=False, crlf=True):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    data = buf.getvalue().encode("utf-8")
    with open(os.path.join(HERE, name), "wb") as f:
        f.write((b"\xef\xbb\xbf" if bom else b"") + data)


def write_json(name, value):
    with open(os.path.join(HERE, name), "w", encoding="utf-8", newline="\n") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


pm_header = ["Email", "First Name", "Last Name", "Display Name", "Company", "Title", "Department"]
write_csv("politemail-all-staff.csv", pm_header, [[r[h] for h in pm_header] for r in all_staff_rows], bom=True)
mg_header = ["E-mail", "First Name", "Last Name", "Title", "Department"]
write_csv("politemail-managers.csv", mg_header, [[r[h] for h in mg_header] for r in managers_rows], delimiter=";",
          bom=True)

users_header = ["id", "userPrincipalName", "displayName", "surname", "mail", "givenName", "userType", "jobTitle",
                "department", "accountEnabled", "proxyAddresses"]
write_csv("entra-users.csv", users_header, [
    [u["id"], u["userPrincipalName"], u["displayName"], u["surname"], u["mail"], u["givenName"], u["userType"],
     u["jobTitle"], u["department"], "true" if u["accountEnabled"] else "false", ";".join(u["proxyAddresses"])]
    for u in users
], bom=True)


def member_row(obj, kind):
    if kind == "User":
        upn = obj["userPrincipalName"]
        if obj is upn_case_user:
            upn = upn.title()  # the portal shows the directory's own spelling; case never matters
        return [obj["id"], upn, obj["displayName"], kind]
    return [obj["id"], "", obj["displayName"], kind]


write_csv("entra-members-all-staff.csv", ["Object ID", "User principal name", "Display name", "Member type"],
          [member_row(o, k) for o, k in all_staff_members], crlf=False)
write_csv("entra-members-managers.csv", ["id", "userPrincipalName", "displayName", "mail", "@odata.type"],
          [[u["id"], u["userPrincipalName"], u["displayName"], u["mail"], "#microsoft.graph.user"]
           for u in managers_members], crlf=False)

with open(os.path.join(HERE, "keep.txt"), "w", newline="\n") as f:
    f.write("# Users writeback never removes from a group, even when they are not on the PoliteMail list.\n")
    f.write("# One UPN or object id per line; '#' starts a comment.\n")
    f.write(f"{breakglass['userPrincipalName']}   # emergency access account\n")
    f.write(f"{svc_kiosk['id']}   # lobby signage service account ({svc_kiosk['userPrincipalName']})\n")

# Fake servers: the same data, so the live path (Graph + PoliteMail API) gives the same plan as the files.
comms_members = [staff[i]["id"] for i in range(0, 40, 5)]


def group(gid, name, members):
    return {"id": gid, "displayName": name, "groupTypes": [], "mailEnabled": False, "securityEnabled": True,
            "onPremisesSyncEnabled": None, "isAssignableToRole": False, "membershipRule": None, "members": members}


write_json("fake-tenant.json", {
    "tenant_id": TENANT_ID,
    "users": [{k: u[k] for k in ["id", "userPrincipalName", "displayName", "mail", "userType", "accountEnabled",
                                 "proxyAddresses"]} | {"mail": u["mail"] or None} for u in users],
    "groups": [
        group(ALL_STAFF_GROUP, "All Staff", [o["id"] for o, _ in all_staff_members]),
        group(MANAGERS_GROUP, "Managers", [u["id"] for u in managers_members]),
        group(COMMS_TEAM_GROUP, "Comms Team", comms_members),
    ],
    "directoryObjects": [device, service_principal, org_contact],
})

contact_ids = {}


def pm_contacts(rows, email_key):
    out = []
    for r in rows:
        key = r[email_key].strip().lower()
        cid = contact_ids.setdefault(key, 1000 + len(contact_ids))
        display = r.get("Display Name") or f"{r['First Name']} {r['Last Name']}".strip()
        out.append({"ID": cid, "Email": r[email_key], "FirstName": r["First Name"], "LastName": r["Last Name"],
                    "DisplayName": display})
    return out


write_json("fake-politemail.json", {"lists": [
    {"ID": ALL_STAFF_LIST_ID, "Name": "All Staff", "contacts": pm_contacts(all_staff_rows, "Email")},
    {"ID": MANAGERS_LIST_ID, "Name": "Managers", "contacts": pm_contacts(managers_rows, "E-mail")},
]})

with open(os.path.join(HERE, "ids.txt"), "w", newline="\n") as f:
    f.write(f"tenant      {TENANT_ID}\n")
    f.write(f"All Staff   group {ALL_STAFF_GROUP}  PoliteMail list {ALL_STAFF_LIST_ID}\n")
    f.write(f"Managers    group {MANAGERS_GROUP}  PoliteMail list {MANAGERS_LIST_ID}\n")
    f.write(f"Comms Team  group {COMMS_TEAM_GROUP}  (nested in All Staff)\n")
    f.write(f"contacts: all-staff {len(all_staff_rows)}, managers {len(managers_rows)}; users {len(users)}; "
            f"members: all-staff {len(all_staff_members)}, managers {len(managers_members)}\n")
print(open(os.path.join(HERE, "ids.txt")).read(), end="")

// CodeSystems of the output contract (output-contract.md "Project terminology"; adapter/constants.py CS_*).
// Codes harvested from mappings/output-codes.yaml, adapter/output/*.py, adapter/grading/*.py and the golden
// outputs (tests/data/golden/*.out.json); tests/test_profiles_build.py checks every golden code is defined.

RuleSet: ProjectCodeSystem
* ^status = #draft
* ^experimental = false
* ^caseSensitive = true
* ^content = #complete
* ^publisher = "cart-fhir"

CodeSystem: CartToxicity
Id: cart-toxicity
Title: "CAR-T toxicity concepts"
Description: "Toxicity types, grading scales and assessments, grade components and the grading method written by cart-fhir."
* insert ProjectCodeSystem
// toxicity types (output-contract.md; mappings/output-codes.yaml toxicities.*.code)
* #crs "Cytokine release syndrome"
* #icans "Immune effector cell-associated neurotoxicity syndrome"
* #iec-hs "Immune effector cell-associated hemophagocytic lymphohistiocytosis-like syndrome"
* #icaht "Immune effector cell-associated hematotoxicity"
* #infection "Infection after CAR-T cell therapy"
* #neurotoxicity-other "Neurotoxicity other than ICANS"
* #hypogammaglobulinemia "Hypogammaglobulinemia after CAR-T cell therapy"
* #b-cell-aplasia "B-cell aplasia after CAR-T cell therapy"
* #second-malignancy "Second primary malignancy after CAR-T cell therapy"
* #prolonged-cytopenia "Prolonged cytopenia beyond day 100 after CAR-T cell therapy"
// grading scales and assessments (Observation.code, Condition.stage.type; output-codes.yaml scale)
* #crs-grade-astct "CRS grade (ASTCT 2019)"
* #icans-grade-astct "ICANS grade (ASTCT 2019)"
* #iec-hs-grade "IEC-HS grade (ASTCT 2023, engine screen)"
* #icaht-grade-early "Early ICAHT grade (EHA/EBMT 2023), days 0-30"
* #icaht-grade-late "Late ICAHT grade (EHA/EBMT 2023), after day 30"
* #car-hematotox-score "CAR-HEMATOTOX score"
* #infection-grade-ctcae "Infection grade (CTCAE v5.0)"
* #neurotoxicity-grade-ctcae "Neurological event grade (CTCAE v5.0)"
* #treatment-response "Treatment and response of a toxicity episode"
* #hypogammaglobulinemia-iago "Hypogammaglobulinemia (IgG <= 400 mg/dL, IAGO long-term effect)"
* #b-cell-aplasia-iago "B-cell aplasia (CD19+ B cells, IAGO long-term effect)"
* #second-malignancy-iago "Second primary malignancy (IAGO long-term effect)"
* #prolonged-cytopenia-ctcae "Prolonged cytopenia after day 100 (CTCAE v5.0 grade)"
// CRS and ICANS components (adapter/output/codes.py COMPONENT_DISPLAY)
* #fever "Fever (temperature >= 38.0 C)"
* #max-temperature "Highest body temperature of the day"
* #hypotension "Hypotension management"
* #hypoxia "Oxygen support"
* #ice-score "ICE score (lowest of the day)"
* #capd-score "CAPD score (highest of the day)"
* #consciousness "Level of consciousness (worst of the day)"
* #seizure "Seizure"
* #motor "Motor findings"
* #cerebral-edema "Raised intracranial pressure / cerebral edema"
// ICANS episode labels (grading.md decision 7, revised; mappings/astct-icans-2019.yaml inflammatory_context)
* #phenotype "ICANS episode phenotype"
* #inflammatory-context "Inflammatory context at ICANS onset"
// IAGO long-term effect components (adapter/cart_fhir/grading/hypogamma.py, bcell_aplasia.py,
// second_malignancy.py, late_cytopenia.py)
* #igg-nadir "IgG nadir (mg/dL)"
* #igg-replacement "Immunoglobulin replacement given"
* #duration-days "Duration (days)"
* #linked-infections "Infections in the same period"
* #cd19-nadir "CD19+ B-cell nadir (/uL)"
* #malignancy-lineage "Malignancy lineage"
* #neutrophils-nadir "Neutrophils, lowest after day 100 (/uL)"
* #platelets-nadir "Platelets, lowest after day 100 (/uL)"
* #hemoglobin-nadir "Hemoglobin, lowest after day 100 (g/dL)"
// IEC-HS screen components (adapter/cart_fhir/grading/iechs/; mappings/astct-iechs-2023.yaml)
* #ferritin "Ferritin, highest in the window (ng/mL)"
* #ferritin-ratio "Ferritin, highest / upper limit of normal"
* #ferritin-baseline-ratio "Ferritin, highest / pre-infusion baseline"
* #alt "ALT, highest in the window (U/L)"
* #ast "AST, highest in the window (U/L)"
* #fibrinogen "Fibrinogen, lowest in the window (mg/dL)"
* #cytopenia "New or worsening cytopenia"
* #screen-criterion "IEC-HS screen criterion met"
// ICAHT components (adapter/cart_fhir/grading/icaht/)
* #anc-nadir "ANC nadir (/uL)"
* #days-anc-le-500 "Days with ANC <= 500/uL"
* #days-anc-le-100 "Days with ANC <= 100/uL"
* #anc-second-lowest "Second-lowest ANC of the late window (/uL)"
// CAR-HEMATOTOX components: points per variable (mappings/car-hematotox-2021.yaml variables)
* #platelets "Platelet count points"
* #anc "ANC points"
* #hemoglobin "Hemoglobin points"
* #crp "CRP points"
// treatment-response components (adapter/cart_fhir/grading/treatments/)
* #time-to-first-treatment "Hours from episode onset to first treatment"
* #steroid-refractory "Steroid-refractory"
* #dexamethasone-equivalent-mg "Cumulative corticosteroid dose, dexamethasone equivalent (mg)"
* #icans-remission-idm "ICANS remission"
// method (output-contract.md section 1)
* #automated-grading "Automated grading"

CodeSystem: ToxicityGrade
Id: toxicity-grade
Title: "Toxicity grade"
Description: "Grades 0 to 5 of the grading scales used by cart-fhir; the scale is given by the resource (Observation.code, Condition.stage.type)."
* insert ProjectCodeSystem
* #0 "Grade 0"
* #1 "Grade 1"
* #2 "Grade 2"
* #3 "Grade 3"
* #4 "Grade 4"
* #5 "Grade 5"

CodeSystem: GradeQualifier
Id: grade-qualifier
Title: "Grade qualifier"
Description: "Qualifies a grade the present data prove only as a bound (grading.md decision 2)."
* insert ProjectCodeSystem
* #at-least "At least this grade"

CodeSystem: CarHematotoxRisk
Id: car-hematotox-risk
Title: "CAR-HEMATOTOX risk group"
Description: "Risk group of the CAR-HEMATOTOX score (Rejeski et al., Blood 2021; grading.md 5.1, 10.7)."
* insert ProjectCodeSystem
* #low "Low risk"
* #high "High risk"

CodeSystem: CrsHypotensionTier
Id: crs-hypotension-tier
Title: "CRS hypotension management tier"
Description: "Answers of the CRS hypotension component (mappings/astct-crs-2019.yaml hypotension_tiers; grading.md 10.7)."
* insert ProjectCodeSystem
* #none "No hypotension"
* #low-blood-pressure "Hypotension not requiring vasopressors"
* #single-vasopressor "Hypotension requiring one vasopressor"
* #vasopressin-only "Hypotension requiring vasopressin only"
* #multiple-vasopressors "Hypotension requiring multiple vasopressors (excluding vasopressin)"

CodeSystem: CrsOxygenTier
Id: crs-oxygen-tier
Title: "CRS oxygen support tier"
Description: "Answers of the CRS hypoxia component (mappings/astct-crs-2019.yaml oxygen tiers; input-contract.md oxygen tiers)."
* insert ProjectCodeSystem
* #none "No oxygen support"
* #low-flow "Low-flow oxygen (nasal cannula <= 6 L/min or blow-by)"
* #high-flow "High-flow oxygen (> 6 L/min, facemask, non-rebreather, Venturi)"
* #positive-pressure "Positive pressure (CPAP, BiPAP, mechanical ventilation)"
* #unknown-flow "Oxygen device with unknown flow"

CodeSystem: IecHsScreenCriterion
Id: iec-hs-screen-criterion
Title: "IEC-HS screen criterion"
Description: "Criteria of the engine's IEC-HS screen (mappings/astct-iechs-2023.yaml ferritin_rules, transaminases, fibrinogen, cytopenia, timing keys)."
* insert ProjectCodeSystem
* #ferritin-uln "Ferritin > 2 x upper limit of normal"
* #ferritin-baseline "Ferritin > 2 x pre-infusion baseline"
* #ferritin-doubling "Ferritin doubling within 48 h"
* #transaminases "Raised transaminases"
* #fibrinogen "Low fibrinogen"
* #cytopenia "New or worsening cytopenia"
* #crs-onset-phase "Timing: not in the onset phase of a CRS episode"
* #timing-crs-resolving "Timing: onset as CRS is resolving"
* #timing-after-crs "Timing: within 7 days after CRS resolution"
* #timing-reworsening "Timing: worsening inflammation after initial improvement"
* #timing-no-crs "Timing: no CRS episode in the course"

CodeSystem: IcansPhenotype
Id: icans-phenotype
Title: "ICANS episode phenotype"
Description: "Which ICANS domains an episode involved (grading.md decision 7, revised; Diorio et al., Blood 2024;144:1387)."
* insert ProjectCodeSystem
* #encephalopathic "Encephalopathic: only ICE/CAPD, consciousness, seizure or cerebral edema domains graded above 0"
* #isolated-motor "Isolated motor: only the motor domain (deep focal motor weakness) graded above 0"
* #mixed "Mixed: the motor domain and another domain graded above 0"

CodeSystem: InflammatoryContext
Id: inflammatory-context
Title: "Inflammatory context at ICANS onset"
Description: "Signs of inflammation from 72 h before to 24 h after an ICANS episode's onset (grading.md decision 7, revised)."
* insert ProjectCodeSystem
* #inflammatory "Inflammatory: fever >= 38.0 C, an open CRS episode, or CRP or ferritin above its reference range"
* #non-inflammatory "Non-inflammatory: temperature and CRP measured, no sign of inflammation"
* #unknown "Unknown: temperature or CRP (with a reference range) not measured in the window"

CodeSystem: MalignancyLineage
Id: malignancy-lineage
Title: "Second malignancy lineage"
Description: "Lineage of a second primary malignancy after CAR-T (mappings/second-malignancy.yaml)."
* insert ProjectCodeSystem
* #t-cell "T-cell malignancy (FDA 2024 boxed warning)"
* #myeloid "Myeloid neoplasm (MDS/AML)"
* #other "Other malignancy"
